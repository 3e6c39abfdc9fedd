-- Neovim 0.11+: the docs/lsp.md configuration as an init.lua, tried under tmux.
--   cd $ZEN_LSP_ROOT && ZEN_LSP_CMD="python -m zen_code_jax.lsp ..." nvim -u nvim011_init.lua main.py
-- (ZEN_LSP_CMD only replaces `cmd`; everything else is the docs' block.)
vim.lsp.config('zen_code', {
  cmd = vim.split(os.getenv('ZEN_LSP_CMD') or 'python -m zen_code_jax.lsp --url=http://127.0.0.1:8000', ' '),
  filetypes = { 'python', 'c', 'cpp', 'go', 'rust', 'java', 'javascript', 'typescript' },
  root_markers = { '.git', 'pyproject.toml' },
  init_options = { debounceMs = 25, contextTokens = 1024 },
  settings = { zenCode = { maxTokensSingleLine = 24 } },   -- sent as didChangeConfiguration
})
vim.lsp.enable('zen_code')
vim.o.completeopt = 'menuone,noselect,popup'
vim.api.nvim_create_autocmd('LspAttach', { callback = function(ev)
  local client = vim.lsp.get_client_by_id(ev.data.client_id)
  if client and client.name == 'zen_code' then
    if vim.lsp.inline_completion then          -- 0.12+: ghost text, Tab accepts
      vim.lsp.inline_completion.enable(true, { bufnr = ev.buf })
    else                                       -- 0.11: the item in the popup menu
      vim.lsp.completion.enable(true, client.id, ev.buf, { autotrigger = true })
    end
  end
end })
-- 0.12: Tab accepts the ghost text, or is a Tab when there is none
if vim.lsp.inline_completion then
  vim.keymap.set('i', '<Tab>', function()
    if not vim.lsp.inline_completion.get() then return '<Tab>' end
  end, { expr = true })
end
