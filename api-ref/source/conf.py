# kerbside API reference (os-api-ref). Build:
#   sphinx-build -W --keep-going -b html api-ref/source api-ref/build/html
extensions = [
    'openstackdocstheme',
    'os_api_ref',
]

html_theme = 'openstackdocs'
html_theme_options = {
    'sidebar_mode': 'toc',
}
openstackdocs_repo_name = 'kerbside/kerbside-rs'
openstackdocs_bug_project = 'kerbside'
openstackdocs_bug_tag = 'api-ref'

project = 'kerbside API Reference'
copyright = '2026, the kerbside authors'
master_doc = 'index'
source_suffix = '.rst'
pygments_style = 'native'

latex_documents = [
    ('index', 'kerbside-api-ref.tex', 'kerbside API Reference',
     'the kerbside authors', 'manual'),
]
