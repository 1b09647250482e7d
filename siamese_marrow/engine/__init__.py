"""The jobs a user runs, as plain functions over paths and values returning dicts of metrics:
``train`` (balanced-pair training), ``banks`` (build, add to, remove from and describe an anchor
bank), ``predict`` (classify and search images, output formats), ``fewshot`` (seeded N-way K-shot
episodes), ``evaluate`` (metrics.json, figures, report.html; retrieval metrics) and ``pipeline``
(the demo). The CLI only parses arguments and calls these."""
