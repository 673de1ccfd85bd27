"""Attribution and licence notices shipped with the emoji demo dataset (``LICENSES.md``)."""

from __future__ import annotations

from importlib import resources

__all__ = ["MIT_TEXT", "emoji_licenses_markdown"]

MIT_TEXT = """\
Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

_HEADER = """\
# Licences and attributions of the HMAR Studio emoji demo dataset

This dataset (images in `train/` and `val/`, the optional `.npz` file, `labels.json` and
`images.csv`) is derived from the emoji artwork and metadata listed below. **Changes made:** every
image was converted to RGBA, padded to a square, resized with Lanczos to {size}x{size} pixels,
composited onto a white background and saved as an RGB PNG; images were relabelled into
semantic classes derived from the Unicode emoji category and subcategory. Anything trained on or
generated from this data should carry these attributions (for example in a model card).

| style / file | source (npm package, pinned) | licence |
|---|---|---|
| `fluent3d/*` | Microsoft Fluent Emoji (3D), repackaged as `{fluent}` | MIT |
| `noto/*` | Google Noto Emoji, via `{google}` | Apache-2.0 |
| `twemoji/*` | Twemoji (jdecked/twemoji fork of Twitter's Twemoji), via `{twitter}` | CC-BY-4.0 |
| `labels.json`, `images.csv` (Unicode names/categories) | `emoji.json` of `{google}` | MIT |

## Microsoft Fluent Emoji (style `fluent3d`) — MIT

Art: https://github.com/microsoft/fluentui-emoji. The npm tarball `{fluent}` (repackaging by
LobeHub, https://github.com/lobehub/fluent-emoji, MIT) contains no licence file, so the notice of
the upstream art is reproduced here.

```
MIT License

Copyright (c) Microsoft Corporation.

{mit}```

Repackaging: Copyright (c) 2023 LobeHub, MIT licence (same terms as above).

## Google Noto Emoji (style `noto`) — Apache License 2.0

Art: https://github.com/googlefonts/noto-emoji, Copyright Google LLC and the Noto Emoji authors,
licensed under the Apache License, Version 2.0 (full text at the end of this file). The images
here are modified as described at the top. The `emoji-datasource-google` README states: "Android/
Google/Noto images, are available under the Apache License 2.0".

## Twemoji (style `twemoji`) — CC-BY 4.0

Twemoji graphics, Copyright Twitter, Inc. and other contributors
(https://github.com/jdecked/twemoji), licensed under the Creative Commons Attribution 4.0
International licence, https://creativecommons.org/licenses/by/4.0/. The images here are
modified as described at the top. Credit line to use: "Twemoji by Twitter, Inc. and other
contributors, CC-BY 4.0".

## emoji-datasource (`emoji.json`: names, categories) — MIT

https://github.com/iamcal/emoji-data

```
{datasource_license}```

## Apache License 2.0 (full text)

```
{apache}```
"""


def emoji_licenses_markdown(
    *, size: int, fluent_spec: str, google_spec: str, twitter_spec: str, datasource_license: str
) -> str:
    """Text of the dataset's ``LICENSES.md``.

    Args:
        size: Image side in pixels, mentioned in the list of changes.
        fluent_spec: npm spec of the Fluent 3D tarball.
        google_spec: npm spec of the Noto (emoji-datasource-google) tarball.
        twitter_spec: npm spec of the Twemoji (emoji-datasource-twitter) tarball.
        datasource_license: The ``LICENSE`` file of emoji-datasource, copied verbatim.

    Returns:
        Markdown text.
    """
    apache = resources.files(__package__).joinpath("licenses/Apache-2.0.txt").read_text()
    return _HEADER.format(
        size=size,
        fluent=fluent_spec,
        google=google_spec,
        twitter=twitter_spec,
        mit=MIT_TEXT,
        datasource_license=datasource_license.rstrip("\n") + "\n",
        apache=apache.strip("\n") + "\n",
    )
