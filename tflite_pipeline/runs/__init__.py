"""Runs: a recipe in, a published run folder out.

    pipeline.py  the orchestrator (`run`, `convert`): prepare -> stages -> convert -> verify -> optional -> publish
    optional.py  the steps after verification a run can do without (diagnose + fallback, latency)
    verify.py    `verify`: the parity gate on an existing run folder or files
    cache.py     finished stages kept under a key over their inputs (resume)
    folder.py    the run folder: staged, then renamed into place complete
    outputs.py   the `.tflite` files a run writes and what is measured about them
    report.py    report.json / .md / .html; plots.py its figures; manifest.py what a run was made from
"""
