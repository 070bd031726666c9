"""Reports: figures (``figures``) and results rendered as one self-contained HTML page.

``builders`` turns a results folder into a small page model (``page``); ``html`` renders it with one Jinja2
template (``templates/report.html.j2``), images inlined. ``squiggles report DIR`` is the command.
"""
