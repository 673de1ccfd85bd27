"""Training-free editing: inpaint, outpaint, class edits and incremental re-edits.

Editing is the sampler with a constraint (:class:`EditSpec`), run by whichever
:class:`~hmar_core.engine.Engine` the pipeline was built with; the package is typed against
:class:`~hmar_core.engine.EditModel` and never imports the pipeline. Reading order:

* :mod:`.masks` — pixel masks → per-scale token masks, feathering, compositing;
* :mod:`.spec` — :class:`EditOptions` (every knob of an edit), :class:`EditSpec` (the
  constraint) and the edit schedule;
* :mod:`.session` — running a spec, with the :class:`EditSession` cache for re-edits;
* :mod:`.revise` — class edits that regenerate the kept coarse tokens the class disfavours;
* :mod:`.ops` — image-level edits (:func:`edit`): windows, encode, sample, decode, paste;
* :mod:`.outpaint` — extending the canvas window by window (:func:`outpaint`).
"""

from .ops import (
    ClassEditDefaults,
    EditPreview,
    EditResult,
    PreviewCallback,
    class_edit_defaults,
    default_class_strength,
    edit,
)
from .outpaint import FILL_MODES, outpaint
from .revise import DEFAULT_CLASS_REVISE
from .session import EditSession
from .spec import DEFAULT_EDIT_STEPS, FIT_MODES, EditFields, EditOptions, EditSpec, edit_schedule

__all__ = [
    "ClassEditDefaults",
    "DEFAULT_CLASS_REVISE",
    "DEFAULT_EDIT_STEPS",
    "FILL_MODES",
    "FIT_MODES",
    "EditFields",
    "EditOptions",
    "EditPreview",
    "EditResult",
    "EditSession",
    "EditSpec",
    "PreviewCallback",
    "class_edit_defaults",
    "default_class_strength",
    "edit",
    "edit_schedule",
    "outpaint",
]
