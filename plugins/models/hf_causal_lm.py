"""Model plugin ``hf_causal_lm``: any Hugging Face causal LM from a hub id or a local checkpoint directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (Field, SerializerFunctionWrapHandler, ValidationInfo, field_validator, model_serializer,
                      model_validator)

from harness import (HarnessError, LoadedModel, ModelPlugin, PluginConfig, StageContext, WeightsSource, cached_locally,
                     hookimpl, hub_reachable, offline_mode, read_regular)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RandomInit(PluginConfig):
    """A randomly initialised model of the checkpoint's architecture instead of its trained weights (a control model,
    or a shape to test): config and tokenizer come from ``path``; the shape keys set here replace the config's."""

    #: Seeds torch's generator for the initialisation (the same seed gives the same weights).
    seed: int = 0
    #: Width of the residual stream (null: the checkpoint's config).
    hidden_size: int | None = Field(default=None, ge=1)
    #: Attention heads; must divide ``hidden_size`` (null: the checkpoint's config).
    num_attention_heads: int | None = Field(default=None, ge=1)
    #: Decoder layers (null: the checkpoint's config).
    num_hidden_layers: int | None = Field(default=None, ge=1)
    #: Width of the feed-forward layers (null: the checkpoint's config).
    intermediate_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> RandomInit:
        # transformers' attention splits the hidden state into equal heads; caught here, `harness validate` says so in
        # one line instead of `harness run` failing inside the model's constructor.
        heads, hidden = self.num_attention_heads, self.hidden_size
        if heads is not None and hidden is not None and hidden % heads:
            raise ValueError(f"num_attention_heads ({heads}) must divide hidden_size ({hidden}); fix: choose a "
                             f"hidden_size that is a multiple of {heads}, or another head count")
        return self

    def overrides(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump(exclude={"seed"}).items() if v is not None}


class HFCausalLMConfig(PluginConfig):
    #: A hub id (``EleutherAI/pythia-1.4b``) or a local directory with config + safetensors weights.
    path: str
    #: A hub revision (branch, tag or commit) of ``path``; null: the default branch.
    revision: str | None = None
    #: Tokenizer hub id or directory, when it is not stored with the model.
    tokenizer: str | None = None
    #: The dtype the weights are loaded in (``auto``: the checkpoint's own).
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    #: Overrides the suite's device for this model.
    device: str | None = None
    #: Runs code from the model repository. Off unless a suite asks for it.
    trust_remote_code: bool = False
    #: A GGUF file inside ``path`` (dequantised to ``dtype`` on load; GGUF holds no code, like safetensors).
    gguf_file: str | None = None
    #: Build a randomly initialised model of this architecture instead of loading the weights (see RandomInit).
    #: Needs ``path:`` all the same: the config (architecture) and tokenizer come from it, only the weights do not.
    random_init: RandomInit | None = None

    @model_serializer(mode="wrap")
    def _omit_unused_random_init(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset, the option is left out of the dump, so the cache keys of every existing model stay what they were.
        data = handler(self)
        if data.get("random_init") is None:
            data.pop("random_init", None)
        return data

    @field_validator("path", "tokenizer")
    @classmethod
    def _relative_to_the_suite(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A relative local path is relative to the suite file, as every path in a suite is: ``./ck`` (or a bare
        ``ck`` that names a directory beside the suite) becomes that directory's absolute path; a hub id stays."""
        base = (info.context or {}).get("base_dir")
        if value is None or base is None or value.startswith("<"):
            return value
        expanded = os.path.expanduser(value)
        if os.path.isabs(expanded):
            return value
        beside = Path(base) / expanded
        if value.startswith(".") or beside.is_dir():
            return str(beside.resolve())
        return value

    @model_validator(mode="after")
    def _local_checkpoint_is_loadable(self) -> HFCausalLMConfig:
        """A local checkpoint's files are checked when the suite is validated (cheap: no weights are read)."""
        ref = Path(os.path.expanduser(self.path))
        if _is_local(str(ref)) and not ref.exists():
            raise ValueError(f"checkpoint directory not found: {ref}; fix: check `path:` (a relative path is "
                             "relative to the suite file), or train it first")
        if _is_local(str(ref)) and not ref.is_dir():
            raise ValueError(f"{ref} is not a directory; fix: point `path:` at a checkpoint directory (written by "
                             "`save_pretrained`), not at a file in it")
        if not self.gguf_file and ref.is_dir():
            try:
                check_local_checkpoint(ref, str(ref), self)
            except HarnessError as exc:
                raise ValueError(str(exc)) from None
        return self


def _offline_help(ref: str) -> str:
    return (f"to run offline, download it where the hub is reachable (`hf download {ref}` on a login "
            "node) and set HF_HUB_OFFLINE=1 here, or set `path:` to a local checkpoint directory; the tiny offline "
            "default needs no hub: `plugin: pythia_tiny`")


def _is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or os.path.isdir(path)


def files_fingerprint(directory: Path) -> str:
    """Identity of a local checkpoint's weights: names, sizes and mtimes of its files (cheap, no hashing of GBs)."""
    h = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _load_gguf(ref: str, gguf_file: str, dtype: Any, kwargs: dict[str, Any]) -> torch.nn.Module:
    """Dequantise a GGUF checkpoint into an ordinary model.

    transformers marks a GGUF-loaded model as quantised and then refuses ``save_pretrained``; the weights are
    already dequantised, so copy them into a fresh model built from the config without the quantisation entry.
    """
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(ref, gguf_file=gguf_file, dtype=dtype, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=next(loaded.parameters()).dtype)
    fresh.load_state_dict(loaded.state_dict())
    return fresh


def _random_model(ref: str, init: RandomInit, dtype: Any, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The architecture of ``ref`` with ``init``'s shape, weights drawn from torch's generator seeded by ``init.seed``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ref, **kwargs)
    for key, value in init.overrides().items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init.seed)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=kwargs["trust_remote_code"])
    return model if dtype == "auto" else model.to(dtype)


def check_source(config: HFCausalLMConfig, name: str) -> None:
    """Cheap checks that the weights can be loaded from here, each failure one line with the fix (before
    loading, and in the pre-flight check of `harness run` / `harness slurm submit`)."""
    ref = os.path.expanduser(config.path)
    local = _is_local(ref)
    if local and not Path(ref).is_dir():
        raise HarnessError(f"model '{name}': checkpoint directory not found: {ref}; fix: check `path:` (or train it "
                           "first with `harness train`)")
    if local and config.gguf_file and not (Path(ref) / config.gguf_file).is_file():
        raise HarnessError(f"model '{name}': GGUF file {config.gguf_file} not found in {ref}; fix: check `gguf_file:`")
    if local and not config.gguf_file and config.random_init is None and not any(Path(ref).glob("*.safetensors")):
        raise HarnessError(f"model '{name}': no safetensors weights in {ref}; fix: re-save the checkpoint with "
                           "`save_pretrained(..., safe_serialization=True)` (pickled .bin weights are not loaded)")
    if local and not config.gguf_file:
        check_local_checkpoint(Path(ref), name, config)
    if not local and not cached_locally(ref, revision=config.revision) and (offline_mode() or not hub_reachable()):
        why = "HF_HUB_OFFLINE is set" if offline_mode() else "the hub is unreachable"
        raise HarnessError(f"model '{name}' (models.{name}.path): '{ref}' is not in the local Hugging Face cache and "
                           f"{why}; {_offline_help(ref)}")


#: Files any one of which lets AutoTokenizer build a tokenizer from a directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
#: A safetensors header is JSON of at most this many bytes (the format's own limit is 100 MB).
MAX_HEADER = 100_000_000


def check_safetensors(path: Path, name: str) -> None:
    """The file's header reads as the format says (8-byte length, then JSON) and its tensors fill the file exactly,
    so a truncated download or a corrupt header is one line here rather than a loader's traceback."""
    import json

    size = path.stat().st_size
    problem = ""
    with open(path, "rb") as f:
        raw = f.read(8)
        length = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if length < 2 or length > min(MAX_HEADER, size - 8):
            problem = "its header length is invalid (truncated or not a safetensors file)"
        else:
            try:
                header = json.loads(f.read(length))
                ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                header, ends = None, []
                problem = "its header is not valid safetensors JSON"
            if header is not None and 8 + length + max(ends, default=0) != size:
                problem = (f"its tensors need {8 + length + max(ends, default=0):,} bytes but the file has {size:,} "
                           "(truncated)")
    if problem:
        raise HarnessError(f"model '{name}': {path}: {problem}; fix: copy or download the checkpoint again (or "
                           "re-save it with `save_pretrained`)")


def check_local_checkpoint(directory: Path, name: str, config: HFCausalLMConfig) -> None:
    """A local checkpoint directory has a readable config that needs no code unless allowed, intact safetensors
    weights and tokenizer files (or a separate `tokenizer:`)."""
    import json

    config_file = directory / "config.json"
    try:
        model_config = json.loads(read_regular(config_file, "config.json", MAX_JSON_BYTES))
        if not isinstance(model_config, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise HarnessError(f"model '{name}': {directory} has no config.json; fix: point `path:` at a directory "
                           "written by `save_pretrained`") from None
    except HarnessError as exc:  # a FIFO, a device, a directory, or far too large
        raise HarnessError(f"model '{name}': {exc}") from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"model '{name}': {config_file} is unreadable ({exc}); fix: copy the checkpoint "
                           "again") from None
    if model_config.get("auto_map") and not config.trust_remote_code:
        from transformers import CONFIG_MAPPING

        if model_config.get("model_type") not in CONFIG_MAPPING:
            raise HarnessError(f"model '{name}': {config_file} needs Python code shipped with the checkpoint "
                               f"(auto_map, model_type {model_config.get('model_type')!r}), which is not run unless "
                               "asked; fix: set `trust_remote_code: true` for this model if you trust its source")
    for weights in sorted(directory.glob("*.safetensors")):
        check_safetensors(weights, name)
    if config.tokenizer is None and not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise HarnessError(f"model '{name}': {directory} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, "
                           "...); fix: save the tokenizer beside the weights (`tokenizer.save_pretrained(dir)`) or "
                           "set `tokenizer:` to a tokenizer directory or hub id")
    read_provenance(directory, name)
    tokenizer_dir = directory if config.tokenizer is None else Path(os.path.expanduser(config.tokenizer))
    if config.random_init is None and (tokenizer_dir / "tokenizer.json").exists():
        check_tokenizer_json(tokenizer_dir / "tokenizer.json", model_config.get("vocab_size"), name)


#: config.json, harness.json: far below this; the limit keeps a runaway file from filling memory.
MAX_JSON_BYTES = 16 << 20
#: tokenizer.json of a 256k-token vocabulary is about 20 MB.
MAX_TOKENIZER_BYTES = 512 << 20


def read_provenance(directory: Path, name: str) -> dict[str, Any] | None:
    """A checkpoint's ``harness.json`` (what training recorded), checked for the shape the loader relies on; None when
    there is none. One line with the fix when it is not a JSON object, or its monotonic record is malformed."""
    import json

    path = directory / "harness.json"
    try:
        data = json.loads(read_regular(path, "harness.json", MAX_JSON_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, HarnessError) as exc:
        raise HarnessError(f"model '{name}': {path} is unreadable ({str(exc).splitlines()[0][:160]}); fix: copy the "
                           "checkpoint again, or delete harness.json if the checkpoint was not made by harness") from None
    problem = ""
    if not isinstance(data, dict):
        problem = f"a JSON {type(data).__name__}, not an object"
    elif data.get("monotonic") and not (isinstance(data.get("constrained_weights"), list)
                                        and all(isinstance(w, str) for w in data["constrained_weights"])):
        problem = "`monotonic` is set but `constrained_weights` is not a list of weight names"
    if problem:
        raise HarnessError(f"model '{name}': {path} is malformed ({problem}); fix: re-export the checkpoint with "
                           "`harness train`, or delete harness.json if the checkpoint was not made by harness")
    return data


def check_tokenizer_json(path: Path, vocab_size: Any, name: str) -> None:
    """``tokenizer.json`` loads as a tokenizer, and its largest token id fits the model's embedding (``vocab_size``
    in config.json): a larger id would index past the embedding matrix at the first such token."""
    from tokenizers import Tokenizer

    try:
        text = read_regular(path, "tokenizer.json", MAX_TOKENIZER_BYTES).decode("utf-8")
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a plain Exception; a special file is a HarnessError
        raise HarnessError(f"model '{name}': {path} does not load as a tokenizer ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); fix: save the tokenizer again "
                           "(`tokenizer.save_pretrained(dir)`) or set `tokenizer:`") from None
    ids = list(tokenizer.get_vocab(with_added_tokens=True).values())
    largest = max(ids, default=-1)
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and largest >= vocab_size:
        raise HarnessError(f"model '{name}': {path} has token id {largest}, beyond the model's embedding of "
                           f"{vocab_size} rows (config.json vocab_size); fix: use the tokenizer the model was trained "
                           "with (or `tokenizer:` pointing at it)")


def load_hf_causal_lm(config: HFCausalLMConfig, ctx: StageContext, name: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are the ones that matter

    check_source(config, name)
    ref = os.path.expanduser(config.path)
    local = _is_local(ref)
    dtype = "auto" if config.dtype == "auto" else DTYPES[config.dtype]
    device = torch.device(config.device) if config.device else ctx.torch_device()
    kwargs: dict[str, Any] = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
    try:
        if config.gguf_file:
            tokenizer = (AutoTokenizer.from_pretrained(os.path.expanduser(config.tokenizer), **kwargs)
                         if config.tokenizer else AutoTokenizer.from_pretrained(ref, gguf_file=config.gguf_file, **kwargs))
            model = _load_gguf(ref, config.gguf_file, dtype, kwargs)
        elif config.random_init is not None:
            tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(config.tokenizer or ref), **kwargs)
            model = _random_model(ref, config.random_init, dtype, kwargs)
        else:
            tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(config.tokenizer or ref), **kwargs)
            # Its multi-line load report of a mismatch is said here in one line instead.
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                model, loading = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, use_safetensors=True,
                                                                      output_loading_info=True, **kwargs)
            finally:
                hf_logging.set_verbosity(verbosity)
            # transformers 5 re-initialises a tensor whose shape differs from the config (with a warning): the
            # model would be partly random. Refuse, as transformers 4 does.
            mismatched = loading.get("mismatched_keys") or []
            if mismatched:
                first = mismatched[0]
                raise RuntimeError(f"size mismatch for {first[0] if isinstance(first, tuple) else first} "
                                   f"({len(mismatched)} tensor(s))")
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        if "allocate memory" in str(exc) or "out of memory" in str(exc).lower():  # the machine, not the files
            raise HarnessError(f"model '{name}': out of memory while loading {ref} ({first}); fix: give the process "
                               "more memory (a larger node, SLURM --mem) or load a smaller `dtype:`") from exc
        if local and "mismatch" in str(exc):
            raise HarnessError(f"model '{name}': the weights in {ref} do not match its config.json ({first}); fix: "
                               "use the config.json saved with these weights") from exc
        if local:
            raise HarnessError(f"model '{name}': cannot load {ref}: {first}; fix: check that the "
                               "directory holds config.json, tokenizer files and *.safetensors") from exc
        if not isinstance(exc, OSError):
            raise
        raise HarnessError(f"model '{name}': cannot load '{ref}' from the Hugging Face hub ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160]}); {_offline_help(ref)}") from exc
    if tokenizer.pad_token_id is None:  # batching needs a pad id; it is always masked out
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if getattr(tokenizer, "add_bos_token", False):
        # Scores are computed on exactly the tokens a plugin asks for; an automatic BOS (SmolLM2/Llama tokenizers
        # on transformers 4.x) would shift every perplexity. Plugins that want one add it explicitly.
        try:
            tokenizer.add_bos_token = False
        except (AttributeError, ValueError):
            pass
    model.to(device).eval()
    info = {"source": ref, "revision": config.revision, "dtype": str(next(model.parameters()).dtype),
            "device": str(device), "n_parameters": sum(p.numel() for p in model.parameters()),
            "architecture": type(model).__name__}
    if local:
        provenance = read_provenance(Path(ref), name)
        if provenance is not None:
            info["harness"] = provenance
            if info["harness"].get("monotonic"):
                info["monotonic_verified"] = verify_non_negative(model, info["harness"], ref, name)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, info=info)


def verify_non_negative(model: torch.nn.Module, provenance: dict[str, Any], ref: str, name: str) -> int:
    """A checkpoint whose ``harness.json`` says it is monotonic must be: every weight listed in
    ``constrained_weights`` is >= 0 (and finite). Returns how many weights were checked."""
    names = provenance.get("constrained_weights") or []
    if not names:
        raise HarnessError(f"model '{name}': {ref}/harness.json says the model is monotonic but lists no "
                           "constrained_weights; fix: re-export it with `harness train monotonic`")
    params = dict(model.named_parameters())
    for pname in names:
        if pname not in params:
            raise HarnessError(f"model '{name}': constrained weight '{pname}' listed in {ref}/harness.json is not in "
                               "the model; fix: re-export the checkpoint with `harness train monotonic`")
        w = params[pname].detach()
        bad = int((~(w >= 0)).sum())  # negative or NaN
        if bad:
            raise HarnessError(f"model '{name}': {ref} is marked monotonic (variant "
                               f"{provenance.get('variant')}) but {pname} has {bad} negative or NaN entries (min "
                               f"{float(w.min()):.4g}); fix: the weights were changed after export; re-export with "
                               "`harness train monotonic`")
    return len(names)


class HFCausalLM(ModelPlugin[HFCausalLMConfig]):
    """Any Hugging Face causal LM: hub id or local checkpoint (safetensors only)."""

    name = "hf_causal_lm"

    def load(self, ctx: StageContext) -> LoadedModel:
        return load_hf_causal_lm(self.config, ctx, ctx.stage.model)

    def preflight(self, where: str) -> None:
        check_source(self.config, where.partition(".")[2] or where)  # "models.pythia_1.4b": names may hold dots

    def weights_source(self) -> WeightsSource:
        ref = os.path.expanduser(self.config.path)
        return WeightsSource(ref, _is_local(ref), self.config.revision, self.config.dtype, self.config.gguf_file)

    def cache_key(self) -> dict[str, Any]:
        key = self.config.model_dump(mode="json")
        ref = os.path.expanduser(self.config.path)
        if _is_local(ref) and Path(ref).is_dir():
            key["fingerprint"] = files_fingerprint(Path(ref))
        return key


@hookimpl
def harness_models() -> list[type]:
    return [HFCausalLM]
