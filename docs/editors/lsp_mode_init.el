;; Emacs with lsp-mode: the docs/lsp.md configuration as an init file, tried under tmux:
;;   cd $ZEN_LSP_ROOT && ZEN_LSP_ARGS="--random_preset=tiny --tokenizer=DIR" emacs -nw -q -l lsp_mode_init.el main.py
;; (ZEN_LSP_ARGS only replaces the backend flags; lsp-auto-guess-root and the session file
;; only keep lsp-mode from asking questions on a first start.)
(package-initialize)
(setq lsp-auto-guess-root t lsp-session-file (make-temp-file "lsp-session"))
(require 'lsp-mode)
(setq lsp-response-timeout 120)     ; the first in-process completion may compile for seconds
(with-eval-after-load 'lsp-mode
  (add-to-list 'lsp-language-id-configuration '(python-mode . "python"))
  (lsp-register-client
   (make-lsp-client
    :new-connection (lsp-stdio-connection
                     `("python" "-m" "zen_code_jax.lsp"
                       ,@(split-string (or (getenv "ZEN_LSP_ARGS") "--url=http://127.0.0.1:8000"))))
    :activation-fn (lsp-activate-on "python")
    :server-id 'zen-code
    :add-on? t                      ; beside pyright/pylsp, not instead
    :initialization-options '(:debounceMs 25 :contextTokens 1024))))
(when (require 'lsp-inline-completion nil t)   ; lsp-mode 9.0.1+: ghost text
  (add-hook 'lsp-mode-hook #'lsp-inline-completion-mode))
(add-hook 'python-mode-hook #'lsp-deferred)
