;; Emacs 28.2 + Debian's elpa-eglot 1.9, batch: the docs/lsp.md eglot configuration, an
;; edit sent as incremental didChange, then zenCode/prompt and the completion item.
(package-initialize)
(require 'eglot)
(setq eglot-sync-connect 120 eglot-connect-timeout 120)
(with-eval-after-load 'eglot
  (add-to-list 'eglot-server-programs
               `((python-mode python-ts-mode)
                 . ("python" "-m" "zen_code_jax.lsp" ,@(split-string (getenv "ZEN_LSP_ARGS"))
                    :initializationOptions (:debounceMs 0)))))
(find-file (expand-file-name "main.py" (getenv "ZEN_LSP_ROOT")))
(python-mode)
(apply #'eglot (eglot--guess-contact))
(message "managed: %s" (eglot-managed-p))
(goto-char (point-min)) (forward-line 6) (end-of-line)
(insert "0  # 😀中 ")
(delete-char (- (length "0  # 😀中 ")))
(let* ((server (eglot-current-server))
       (p (jsonrpc-request server :zenCode/prompt
                           (list :textDocument (eglot--TextDocumentIdentifier)
                                 :position (eglot--pos-to-lsp-position))
                           :timeout 120)))
  (message "encoding: %s" (plist-get (eglot--capabilities server) :positionEncoding))
  (message "prompt prefix tail: %S context: %S"
           (let ((s (plist-get p :prefix))) (substring s (max 0 (- (length s) 22))))
           (plist-get p :context)))
(let* ((capf (eglot-completion-at-point))
       (cands (all-completions "" (nth 2 capf))))
  (message "completion candidates: %S" cands)
  (when cands
    (insert (car cands))
    (funcall (plist-get (nthcdr 3 capf) :exit-function) (car cands) 'finished)
    (message "line 7 after accepting: %S"
             (buffer-substring (line-beginning-position) (line-end-position)))))
(eglot-shutdown (eglot-current-server))
(message "shut down")
