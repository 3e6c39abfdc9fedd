-- Neovim 0.7.2 headless: the docs/lsp.md "Neovim 0.7-0.11" configuration (only `cmd` from
-- ZEN_LSP_CMD), then an edit (sent as incremental sync), then zenCode/prompt,
-- textDocument/completion and textDocument/inlineCompletion through the client.
--   cd $ZEN_LSP_ROOT && ZEN_LSP_CMD="python -m zen_code_jax.lsp ..." \
--     nvim --headless -u NONE -c "luafile .../nvim07_try.lua"
vim.cmd('filetype on')
vim.api.nvim_create_autocmd('FileType', { pattern = 'python', callback = function()
  local root = vim.fn.getcwd()   -- the workspace folder: start nvim in the repository
  local id = vim.lsp.start_client({
    cmd = vim.split(os.getenv('ZEN_LSP_CMD'), ' '),
    root_dir = root,
    workspace_folders = { { uri = vim.uri_from_fname(root), name = 'proj' } },
    init_options = { debounceMs = 0 },
  })
  vim.lsp.buf_attach_client(0, id)
  vim.bo.omnifunc = 'v:lua.vim.lsp.omnifunc'   -- <C-x><C-o> asks the model
end })
vim.cmd('edit main.py')
local ok = vim.wait(120000, function()
  local c = vim.lsp.buf_get_clients(0)[1]
  return c ~= nil and c.initialized == true
end, 200)
local client = vim.lsp.buf_get_clients(0)[1]
print('initialized', ok, 'encoding', client.offset_encoding, 'omnifunc', vim.bo.omnifunc)
-- an edit nvim sends incrementally: a comment with an emoji and CJK, then deleted (bytes)
vim.api.nvim_buf_set_text(0, 6, 34, 6, 34, {'0  # 😀中 '})
vim.api.nvim_buf_set_text(0, 6, 34, 6, 47, {''})
vim.api.nvim_win_set_cursor(0, {7, 34})
local params = vim.lsp.util.make_position_params()
local res = vim.lsp.buf_request_sync(0, 'zenCode/prompt', params, 120000)
for _, r in pairs(res or {}) do
  print('prompt prefix tail', vim.inspect(r.result and r.result.prefix:sub(-20)),
        'context', vim.inspect(r.result and r.result.context), r.err and vim.inspect(r.err))
end
res = vim.lsp.buf_request_sync(0, 'textDocument/completion', params, 120000)
for _, r in pairs(res or {}) do
  print('completion', vim.inspect(r.result and r.result.items[1] and r.result.items[1].textEdit),
        r.err and vim.inspect(r.err))
end
local ip = vim.tbl_extend('force', params, { context = { triggerKind = 1 } })
res = vim.lsp.buf_request_sync(0, 'textDocument/inlineCompletion', ip, 120000)
for _, r in pairs(res or {}) do print('inline', vim.inspect(r.result), r.err and vim.inspect(r.err)) end
vim.lsp.stop_client(client.id)
vim.wait(5000, function() return vim.lsp.client_is_stopped(client.id) end, 100)
print('stopped', vim.lsp.client_is_stopped(client.id))
vim.cmd('qa!')
