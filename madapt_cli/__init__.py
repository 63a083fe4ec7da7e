"""madapt: Matryoshka adaptors that make any text embedding cheaper to store and search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from madapt_cli.methods.adaptor import Adaptor
    from madapt_cli.pipelines.encode import Encoder

__all__ = ["Adaptor", "Encoder", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import madapt_cli` (and the CLI's --help) does not load torch.
    if name == "Adaptor":
        from madapt_cli.methods.adaptor import Adaptor

        return Adaptor
    if name == "Encoder":
        from madapt_cli.pipelines.encode import Encoder

        return Encoder
    raise AttributeError(name)
