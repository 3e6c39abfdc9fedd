"""The orchestrator: one arm of an experiment, from corpus to report.

    corpus -> tokenizer -> mesh -> state -> hooks -> train -> evaluate -> report

`arm.run_arm` wires the generic pieces (data pipeline, `train.loop.train`, checkpoint and
tracking hooks, `eval` tasks) for one arm; `report.write_report` turns the arms' run
directories into report.md / report.png; `setup` is what experiment files share;
`plan` prints what a run will do before it starts. `experiments/run.py` is the thin
command-line entry point over these.
"""
