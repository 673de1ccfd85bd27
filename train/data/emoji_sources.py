"""Pinned sources of the emoji demo dataset (``shared/spec/demo-data.md``).

npm versions are immutable, and the sha1 values are the registry's ``dist.shasum``; a build
fails if a tarball differs. Change a pin only together with the spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fetch import NpmTarball

__all__ = [
    "DEFAULT_SOURCES",
    "EMOJI_DATASOURCE_GOOGLE",
    "EMOJI_DATASOURCE_TWITTER",
    "FLUENT_EMOJI_3D",
    "METADATA_PREFIXES",
    "StyleSource",
]

FLUENT_EMOJI_3D = NpmTarball(
    "@lobehub/fluent-emoji-3d@1.1.0",
    "lobehub-fluent-emoji-3d-1.1.0.tgz",
    "ff0679b2bbbf6100dd9709d8952498f08f364ac6",
)
EMOJI_DATASOURCE_GOOGLE = NpmTarball(
    "emoji-datasource-google@16.0.0",
    "emoji-datasource-google-16.0.0.tgz",
    "a80ac3e8106cbd4d8648ce758aa099e8827b6157",
)
EMOJI_DATASOURCE_TWITTER = NpmTarball(
    "emoji-datasource-twitter@16.0.0",
    "emoji-datasource-twitter-16.0.0.tgz",
    "e2bd39a8acb77e158106f8249dd7b4cd93fa1b14",
)
METADATA_PREFIXES: tuple[str, ...] = (
    "package/emoji.json", "package/LICENSE", "package/README.md",
)
"""Members of the metadata tarball that the build extracts."""


@dataclass(frozen=True)
class StyleSource:
    """Where the images of one art style come from.

    Attributes:
        style: A name from :data:`~train.data.emoji_labels.STYLES`.
        tarball: The pinned npm tarball.
        image_prefix: Folder of the images inside the tarball.
        drop_categories: Semantic categories not taken from this style.
    """

    style: str
    tarball: NpmTarball
    image_prefix: str
    drop_categories: tuple[str, ...] = ()


DEFAULT_SOURCES: tuple[StyleSource, ...] = (
    # Fluent 3D "flags" are flat Noto-style copies, not 3D renders: drop them.
    StyleSource("fluent3d", FLUENT_EMOJI_3D, "package/assets/", ("flag",)),
    StyleSource("noto", EMOJI_DATASOURCE_GOOGLE, "package/img/google/64/"),
    StyleSource("twemoji", EMOJI_DATASOURCE_TWITTER, "package/img/twitter/64/"),
)
