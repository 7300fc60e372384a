"""Build ``offline.html``: DVC's plots page with Vega, Vega-Lite and vega-embed inlined.

``dvc plots show`` loads those three libraries from a CDN, so offline (many labs and
clusters) the page is blank. This writes a template for ``dvc plots show
--html-template`` (set in ``.dvc/config``: ``plots.html_template``) holding the
libraries themselves, taken from their npm packages at the versions DVC's page asks
for, with each package's licence beside it and their sha256 in ``VERSIONS``.

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python docs/plots/build_template.py vega-5.20.2.tgz vega-lite-5.2.0.tgz vega-embed-6.18.2.tgz
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).parent
BUILDS = {
    "vega": "package/build/vega.min.js",
    "vega-lite": "package/build/vega-lite.min.js",
    "vega-embed": "package/build/vega-embed.min.js",
}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>cellpipe plots</title>
    <!-- {versions}: inlined from their npm packages (licences and sha256 in docs/plots/), so this page
         renders without a network -->
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
        img {{ max-width: 100%; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main(tarballs: list[str]) -> None:
    scripts, versions, lines = [], [], []
    for tgz in tarballs:
        with tarfile.open(tgz) as tar:
            meta = tar.extractfile("package/package.json").read().decode()
            pkg = json.loads(meta)
            name, version = pkg["name"], pkg["version"]
            code = tar.extractfile(BUILDS[name]).read()
            (HERE / f"LICENSE.{name}").write_bytes(tar.extractfile("package/LICENSE").read())
        if b"</script" in code.lower():
            raise SystemExit(f"{name}: the build contains '</script', which would end the inline script")
        scripts.append(f"    <script>/* {name} {version} */\n{code.decode()}\n    </script>")
        versions.append(f"{name} {version}")
        lines.append(f"{name} {version} {BUILDS[name]} sha256:{hashlib.sha256(code).hexdigest()}")
    (HERE / "offline.html").write_text(PAGE.format(versions=", ".join(versions), scripts="\n".join(scripts)))
    (HERE / "VERSIONS").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
