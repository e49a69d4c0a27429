# Sphinx configuration for the kerbside-rs release notes (built with reno).
extensions = ["reno.sphinxext"]
project = "kerbside-rs Release Notes"
copyright = "kerbside-rs developers"
source_suffix = ".rst"
master_doc = "index"
exclude_patterns = []
html_theme = "alabaster"
