;; Emacs 28+ with eglot: the docs/lsp.md configuration as an init file, tried under tmux:
;;   cd $ZEN_LSP_ROOT && ZEN_LSP_ARGS="--random_preset=tiny --tokenizer=DIR" emacs -nw -q -l eglot_init.el main.py
;; (ZEN_LSP_ARGS only replaces the backend flags; the rest is the docs' block.)
(package-initialize)
(require 'eglot)
(setq eglot-sync-connect 120 eglot-connect-timeout 120)   ; an in-process model loads slowly
(with-eval-after-load 'eglot
  (add-to-list 'eglot-server-programs
               `((python-mode python-ts-mode)
                 . ("python" "-m" "zen_code_jax.lsp"
                    ,@(split-string (or (getenv "ZEN_LSP_ARGS") "--url=http://127.0.0.1:8000"))
                    :initializationOptions (:debounceMs 25)))))
(add-hook 'python-mode-hook #'eglot-ensure)
