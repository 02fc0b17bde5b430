"""MkDocs hook that serves MathJax from the built site, so that math renders with no network.

MathJax 3 comes from the PyPI package `django-static-mathjax` (import name `mathjax`), which
ships MathJax's prebuilt browser bundles and fonts and has no dependencies, Django included.
The hook adds the files that the `tex-chtml.js` bundle loads to the site under
`assets/mathjax/`; `mkdocs.yml` then lists `assets/mathjax/tex-chtml.js` in
`extra_javascript`.
"""

from __future__ import annotations

import importlib.util
import pathlib

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

#: Folder of the site that receives the MathJax files.
SITE_FOLDER = "assets/mathjax"

#: The bundle the pages load, and the folders it loads components and fonts from on demand:
#: TeX extensions (autoload), the CHTML fonts, the accessibility and menu components, and the
#: speech rule engine's locale maps that the menu's speech options fetch.
BUNDLE = "tex-chtml.js"
COMPONENT_FOLDERS = ("input/tex/extensions", "output/chtml/fonts", "a11y", "ui", "sre")


def mathjax_root() -> pathlib.Path:
    """Return the folder of MathJax's browser build inside the installed package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or spec.origin is None:
        raise PluginError(
            "MathJax not found: the docs need the Python package django-static-mathjax. "
            "Install the docs extra with `pip install -e \".[docs]\"`."
        )

    root = pathlib.Path(spec.origin).parent / "static" / "mathjax" / "es5"
    if not (root / BUNDLE).is_file():
        raise PluginError(
            f"MathJax bundle {BUNDLE} not found under {root}: the installed "
            f"django-static-mathjax package has another layout. Reinstall the docs extra."
        )
    return root


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add MathJax's bundle, components and fonts to the files that the build writes."""
    root = mathjax_root()
    sources = [root / BUNDLE]
    for folder in COMPONENT_FOLDERS:
        sources.extend(path for path in sorted((root / folder).rglob("*")) if path.is_file())

    for source in sources:
        uri = f"{SITE_FOLDER}/{source.relative_to(root).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
