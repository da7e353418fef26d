"""SLURM support: ``slurm_args`` parsing (``args``), batch scripts as text (``batch``),
reading ``squeue``/``sacct``/``scontrol`` output (``records``), the per-process job poller
(``poller``) and submitting upcoming items ahead of their turn (``ahead``). The executor
that ties them together is ``pytest_madengine.executors.slurm``."""
