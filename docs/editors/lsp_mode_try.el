;; Emacs 28.2 + Debian's elpa-lsp-mode 8.0.0, batch: the docs/lsp.md lsp-mode client
;; registration, then zenCode/prompt and the completion item through lsp-mode. (8.0 has no
;; inline completion: that is lsp-mode 9.0.1+.)
;;   ZEN_LSP_ROOT=DIR ZEN_LSP_ARGS="--url=..." emacs --batch -l lsp_mode_try.el
(package-initialize)
(require 'lsp-mode)
(setq lsp-auto-guess-root t lsp-enable-snippet nil lsp-response-timeout 120
      lsp-session-file (make-temp-file "lsp-session") lsp-restart 'ignore
      lsp-enable-file-watchers nil lsp-modeline-code-actions-enable nil)
(lsp-register-client
 (make-lsp-client
  :new-connection (lsp-stdio-connection
                   (lambda () `("python" "-m" "zen_code_jax.lsp"
                                ,@(split-string (getenv "ZEN_LSP_ARGS")))))
  :activation-fn (lsp-activate-on "python")
  :server-id 'zen-code
  :add-on? t
  :initialization-options '(:debounceMs 0)))
(find-file (expand-file-name "main.py" (getenv "ZEN_LSP_ROOT")))
(python-mode)
(lsp)
(let ((deadline (+ (float-time) 120)))
  (while (and (< (float-time) deadline)
              (not (cl-some (lambda (w) (eq (lsp--workspace-status w) 'initialized))
                            (lsp-workspaces))))
    (accept-process-output nil 0.2)))
(message "workspaces: %S" (mapcar #'lsp--workspace-status (lsp-workspaces)))
(goto-char (point-min)) (forward-line 6) (end-of-line)
(let ((p (lsp-request "zenCode/prompt"
                      (list :textDocument (lsp--text-document-identifier)
                            :position (lsp--cur-position)))))
  (message "prompt prefix tail: %S context: %S"
           (let ((s (gethash "prefix" p))) (substring s (max 0 (- (length s) 22))))
           (gethash "context" p)))
(let* ((capf (lsp-completion-at-point))
       (cands (and capf (all-completions "" (nth 2 capf)))))
  (message "completion candidates: %S" (mapcar #'substring-no-properties cands)))
(lsp-workspace-shutdown (car (lsp-workspaces)))
(message "shut down")
