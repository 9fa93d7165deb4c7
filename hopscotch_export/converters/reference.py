"""The reference model as a GGUF, so that both sides run in the same engine: preparing it
is a conversion, so it lives here, and verify (and the commands that measure against a
reference) only run what this yields.

A GGUF reference is used as is. A Hugging Face folder or hub id is converted once,
without a plan, to a temporary GGUF of the model's own output type: comparing an f16
reference with a Q4 model would charge quantization error to the skipped blocks.

The temporary GGUF (a whole model) goes in a folder beside the GGUF being verified or in
``--work-dir``, not the system temp folder, which is often small or a RAM disk; free space
there is checked first, and the folder is removed however verification ends (or, after a
SIGKILL or a power cut, by the next verify there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gguf import LlamaFileType
from rich.console import Console

from ..errors import HopscotchError
from ..estimates import Need, check
from ..files import check_work_dir, temp_folder
from ..sources import ModelSource, open_source
from ..sources.gguf_file import scan_gguf
from .convert import choose_outtype
from .needs import convert_needs
from .outtypes import OUTTYPE_OF_FILE_TYPE

#: what the temporary folder of a converted reference is named after (with this process
#: and host, so that the next verify there removes one a killed run left; see files.py)
_NAME = "hopscotch-verify-reference"


@dataclass(frozen=True)
class Reference:
    """The GGUF to run as the reference, and how it was obtained."""

    path: Path
    #: the output type it was converted to, or None when ``spec`` was a GGUF already
    converted_to: str | None


def outtype_of(gguf_path: Path) -> str:
    """The converter output type that reproduces ``gguf_path``'s ``general.file_type``."""
    value = scan_gguf(gguf_path).metadata.get("general.file_type")
    try:
        return OUTTYPE_OF_FILE_TYPE[LlamaFileType(value)]
    except (ValueError, KeyError):
        raise HopscotchError(
            f"cannot tell which output type {gguf_path.name} has (general.file_type={value}); "
            "pass --reference-outtype (f16, q8_0, q4_k_m, ...)"
        ) from None


def check_reference_outtype(source: ModelSource, outtype: str | None) -> None:
    """A GGUF reference is used as it is: an output type for it would be silently ignored."""
    if outtype is not None and source.kind == "gguf":
        raise HopscotchError(
            f"--reference-outtype {outtype}: the reference {source.describe()} is a GGUF already and is used as "
            "it is; drop --reference-outtype (it is for converting a Hugging Face reference)"
        )


def reference_needs(source: ModelSource, outtype: str, folder: Path) -> list[Need]:
    """What converting ``source`` to ``outtype`` in ``folder`` needs: checked by
    :func:`reference_gguf` before it converts, and counted in verify's estimate."""
    return convert_needs(source, choose_outtype(source, outtype), folder / "reference.gguf", folder)


@contextlib.contextmanager
def reference_gguf(
    spec: str, model_gguf: Path, outtype: str | None = None, console: Console | None = None,
    work_dir: Path | None = None,
) -> Iterator[Reference]:
    """Yield the reference as a GGUF, converting (and afterwards deleting) it if needed.

    A conversion is written in a new folder inside ``work_dir`` (default: the folder of
    ``model_gguf``), after checking that the disk there holds it.
    """
    from .convert import convert  # looked up when called, so that a stand-in for it (tests) is used here too

    source = open_source(spec)
    check_reference_outtype(source, outtype)
    if source.kind == "gguf":  # a path, or a name such as bundled:smollm2, that is a GGUF
        yield Reference(source.path, None)
        return
    chosen = outtype or outtype_of(model_gguf)
    check_work_dir(work_dir)
    folder = Path(work_dir or Path(model_gguf).parent)
    check(reference_needs(source, chosen, folder))
    with temp_folder(folder / _NAME, fix="pass --work-dir on another disk") as tmp:
        out = tmp / "reference.gguf"
        if console is not None:
            console.print(f"converting the reference {spec} to {chosen} (no skips) in {tmp} ...")
        convert(source, None, out, outtype=chosen, console=console, work_dir=tmp)
        yield Reference(out, chosen)
