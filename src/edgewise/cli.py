"""``edgewise`` command line: convert, run, inspect, devices, keys, publish, rollout, serve, sync,
ask, infer, stats, demo.

Exit codes: 0 success; 1 an accuracy gate failed (CI should stop); 2 any other edgewise
error (message and hint on stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgewise._version import __version__
from edgewise.errors import EdgewiseError, GateFailedError, InputError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except GateFailedError as exc:
        print(f"edgewise: accuracy gate failed: {exc}", file=sys.stderr)
        return 1
    except EdgewiseError as exc:
        print(f"edgewise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgewise: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewise", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgewise {__version__}")
    sub = parser.add_subparsers(title="commands")

    p = sub.add_parser("convert", help="run a recipe: export, quantize, gate, write bundles and a report")
    p.add_argument("recipe", type=Path)
    p.add_argument("--out", type=Path, help="output directory (default: the recipe's [output] dir)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_convert)

    p = sub.add_parser("run", help="run a bundle or model file on this device")
    p.add_argument("artifact", type=Path)
    p.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy",
                   help="an input array (.npy, or .npz with one array per input); repeat for several inputs")
    p.add_argument("--sample", action="store_true", help="run the bundle's stored sample and compare")
    p.add_argument("--device", default="auto", help="auto | cpu | gpu | npu | an accelerator name (default: auto)")
    p.add_argument("--strict", action="store_true", help="fail instead of falling back to the CPU")
    p.add_argument("--threads", type=int)
    p.add_argument("--output", type=Path, help="write outputs to this .npz")
    p.add_argument("--prompt", help="language models (GGUF): the text to answer, streamed as it is generated")
    p.add_argument("--raw", action="store_true", help="with --prompt: continue the text instead of chatting")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--n-ctx", type=int, help="language models: context window to allocate")
    p.set_defaults(handler=_run)

    p = sub.add_parser("inspect", help="show a bundle's manifest (verified) or a model file's signature")
    p.add_argument("artifact", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("devices", help="what hardware and backends this machine offers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_devices)

    p = sub.add_parser("keys", help="generate ed25519 signing keys for an update repository")
    p.add_argument("keys_dir", type=Path)
    p.add_argument("--root", type=int, default=3, help="root keys (default 3; threshold 2)")
    p.add_argument("--targets", type=int, default=3, help="targets keys (default 3; threshold 2)")
    p.set_defaults(handler=_keys)

    p = sub.add_parser("publish", help="publish a bundle to a TUF update repository (created if missing)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--repo", type=Path, required=True, help="repository directory (plain files)")
    p.add_argument("--keys", type=Path, required=True, help="directory made by `edgewise keys`")
    p.add_argument("--channel", default="stable")
    p.add_argument("--rollout", type=float, default=100.0, help="percent of devices (default 100)")
    p.set_defaults(handler=_publish)

    p = sub.add_parser("rollout", help="change the rollout percentage of a published release")
    p.add_argument("model")
    p.add_argument("percent", type=float)
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--keys", type=Path, required=True)
    p.add_argument("--channel", default="stable")
    p.set_defaults(handler=_rollout)

    p = sub.add_parser("serve", help="serve a repository directory over HTTP on 127.0.0.1 (for local use)")
    p.add_argument("repo", type=Path)
    p.set_defaults(handler=_serve)

    p = sub.add_parser("sync", help="check for, download, verify and install a model update on this device")
    p.add_argument("model")
    p.add_argument("--repo", required=True, help="repository URL")
    p.add_argument("--store", type=Path, required=True, help="this device's model store")
    p.add_argument("--trusted-root", type=Path, help="the repository's trusted_root.json (first sync only)")
    p.add_argument("--channel", default="stable")
    p.add_argument("--device-id", default="", help="stable id for rollout cohorts (default: this host's name)")
    p.add_argument("--check", action="store_true", help="only say whether an update applies")
    p.add_argument("--rollback", action="store_true", help="switch back to the previous version")
    p.set_defaults(handler=_sync)

    p = sub.add_parser("ask", help="ask a language model through the fallback router (device or cloud)")
    p.add_argument("prompt", nargs="+", help="the question (several: asked one after another)")
    _router_arguments(p, model_help="on-device GGUF model or bundle (omit: cloud only)")
    p.add_argument("--n-ctx", type=int, default=512, help="on-device context length (default 512)")
    p.add_argument("--system", help="a system message")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--stream", action="store_true", help="print the answer as it arrives")
    p.set_defaults(handler=_ask)

    p = sub.add_parser("infer", help="run a tensor model through the fallback router (device or cloud)")
    p.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy", required=True,
                   help="an input array (.npy, or .npz with one array per input); repeat for several inputs")
    _router_arguments(p, model_help="on-device bundle or model file (omit: cloud only)")
    p.add_argument("--output", type=Path, help="write outputs to this .npz")
    p.set_defaults(handler=_infer)

    p = sub.add_parser("stats", help="live figures of a device store: requests, latency, drift, shadow, log")
    p.add_argument("store", type=Path, help="a model store (its observe/ folder is read) or an observe folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_stats)

    p = sub.add_parser("demo", help="the main job end to end on a real model and data set (no download)")
    p.add_argument("--out", type=Path, default=Path("edgewise-demo"))
    p.add_argument("--no-encoder", action="store_true", help="skip the MiniLM sentence-encoder part")
    p.add_argument("--no-llm", action="store_true", help="skip the SmolLM2 language-model part")
    p.set_defaults(handler=_demo)
    return parser


def _convert(args: argparse.Namespace) -> int:
    from edgewise.converters import convert, load_recipe

    recipe = load_recipe(args.recipe, output_dir=args.out)
    try:
        report = convert(recipe, progress=not args.quiet)
    except GateFailedError:
        print((recipe.output_dir / "report.md").read_text(encoding="utf-8"))
        raise
    print(report.markdown())
    print(f"bundles and report.md / report.json written to {recipe.output_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from edgewise import device_runtime

    options = {"n_ctx": args.n_ctx} if args.n_ctx else None
    model = device_runtime.load(args.artifact, device=args.device, strict=args.strict, threads=args.threads,
                                engine_options=options)
    print(f"model:  {args.artifact}")
    print(f"placed: {model.placement.describe()}")
    if isinstance(model, device_runtime.TextModel):
        return _run_text(model, args)
    expected = None
    if args.sample:
        if model.bundle is None or model.bundle.manifest.sample is None:
            raise InputError(f"{args.artifact} has no stored sample", hint="Pass --input FILE.npy instead.")
        inputs, expected = model.bundle.load_sample()
    elif args.input:
        inputs = _read_inputs(args.input, [s.name for s in model.signature.inputs])
    else:
        raise InputError("nothing to run", hint="Pass --input FILE.npy (repeatable) or --sample for a bundle.")
    outputs = model.run(inputs)
    for name, array in outputs.items():
        print(f"output {name}: {array.dtype}{list(array.shape)}  {_preview(array)}")
        if model.bundle is not None and model.bundle.manifest.task == "classification" and array.ndim == 2:
            print(f"  top-1: {array.argmax(1).tolist()[:32]}")
    if expected is not None:
        sample = model.bundle.manifest.sample
        ok = all(np.allclose(outputs[k], v, rtol=sample.rtol, atol=sample.atol) for k, v in expected.items())
        print(f"sample check: {'matches' if ok else 'DIFFERS FROM'} the stored expected output "
              f"(rtol={sample.rtol:g}, atol={sample.atol:g})")
        if not ok:
            return 1
    if args.output:
        np.savez(args.output, **outputs)
        print(f"outputs written to {args.output}")
    return 0


def _run_text(model, args: argparse.Namespace) -> int:
    if not args.prompt:
        raise InputError("a language model needs --prompt TEXT")
    print(f"offload: {model.offload.reason}; context {model.context_length} tokens")
    if args.raw:
        stream = model.generate(args.prompt, max_tokens=args.max_tokens, stream=True)
    else:
        stream = model.chat([{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens, stream=True)
    start = time.perf_counter()
    for piece in stream:
        print(piece, end="", flush=True)
    done = stream.completion
    elapsed = time.perf_counter() - start
    print(f"\n[{done.prompt_tokens} prompt + {done.completion_tokens} generated tokens, "
          f"{done.completion_tokens / elapsed:.1f} tokens/s, finish: {done.finish_reason}]")
    return 0


def _read_inputs(specs: list[str], names: list[str]) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    for index, spec in enumerate(specs):
        name, _, file = spec.rpartition("=")
        path = Path(file)
        if not path.is_file():
            raise InputError(f"input file {path} does not exist")
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"cannot read {path} as .npy/.npz: {exc}") from exc
        if isinstance(loaded, np.lib.npyio.NpzFile):
            inputs.update({k: loaded[k] for k in loaded.files})
            continue
        if not name:
            if index >= len(names):
                raise InputError(f"more inputs given than the model has ({names})")
            name = names[index]
        inputs[name] = loaded
    return inputs


def _preview(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    head = ", ".join(f"{v:.4g}" if np.issubdtype(array.dtype, np.floating) else str(v) for v in flat[:6])
    return f"[{head}{', …' if flat.size > 6 else ''}]"


def _inspect(args: argparse.Namespace) -> int:
    from edgewise import device_runtime
    from edgewise.bundle import MANIFEST_NAME, Bundle

    path: Path = args.artifact
    if path.is_dir() and (path / MANIFEST_NAME).exists():
        bundle = Bundle.open(path)
        m = bundle.manifest
        if args.json:
            print(json.dumps(m.to_dict(), indent=2))
            return 0
        print(f"bundle:        {path}  (all {len(m.files)} file hashes verified)")
        print(f"model:         {m.name} {m.version}  [{m.format}, {m.task}]")
        print(f"quantization:  {m.quantization.scheme}"
              + (f"  ({len(m.quantization.float_nodes)} nodes kept in float)" if m.quantization.float_nodes else ""))
        print(f"size:          {m.size_bytes / 1e6:.3f} MB")
        print(f"source:        {m.source.kind} {m.source.name}  {m.source.digest[:23]}…")
        _print_signature(m.signature)
        gate = m.metrics.get("gate", {})
        if gate and gate.get("passed") is None and gate.get("not_run"):  # Core ML off macOS: checked statically
            print(f"gate:          not run ({gate['not_run']}); checked: {', '.join(m.metrics.get('checked', {}))}")
        elif gate:
            print(f"gate:          {'passed' if gate.get('passed') else 'FAILED'} on {gate.get('eval_data', '?')}")
            for key, value in sorted((m.metrics.get("vs_source") or m.metrics.get("quality") or {}).items()):
                print(f"  {key:<22} {value:.6g}" if isinstance(value, float) else f"  {key:<22} {value}")
        print(f"made by:       edgewise {m.edgewise_version}, schema {m.schema_version}, {m.created}")
        return 0
    fmt = device_runtime.detect_format(path)
    if fmt == "gguf":  # described from the checked header: no need to load the weights
        return _inspect_gguf(path, args.json)
    info = device_runtime.inspect_file(path)  # reads a Core ML spec on Linux too (no prediction)
    fmt, signature = info.pop("format"), info.pop("signature")
    if args.json:
        print(json.dumps({"format": fmt, "signature": signature.to_dict(), **info}, indent=2))
        return 0
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    print(f"file:    {path}  [{fmt}, {size / 1e6:.3f} MB]")
    _print_signature(signature)
    for key, value in info.items():
        print(f"{key + ':':<15}{value}")
    return 0


def _inspect_gguf(path: Path, as_json: bool) -> int:
    from collections import Counter

    from gguf import GGMLQuantizationType

    from edgewise.device_runtime import read_gguf_info

    info = read_gguf_info(path)
    types = Counter(GGMLQuantizationType(t.type_id).name for t in info.tensors)
    summary = {"format": "gguf", "version": info.version, "architecture": info.architecture,
               "context_length": info.context_length, "blocks": info.block_count, "tensors": len(info.tensors),
               "tensor_types": dict(types), "chat_template": bool(info.chat_template),
               "name": info.metadata.get("general.name")}
    if as_json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"file:    {path}  [gguf v{info.version}, {info.file_size / 1e6:.3f} MB, header and tensor extents checked]")
    print(f"model:   {summary['name']}  ({info.architecture}, {info.block_count} blocks, "
          f"context {info.context_length})")
    print(f"tensors: {len(info.tensors)}  " + ", ".join(f"{n} {t}" for t, n in types.most_common()))
    print(f"chat:    {'template in file' if info.chat_template else 'no chat template'}")
    return 0


def _print_signature(signature) -> None:
    for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
        for spec in specs:
            print(f"{kind + ':':<15}{spec.name}  {spec.dtype}[{', '.join(str(d) for d in spec.shape)}]")


def _devices(args: argparse.Namespace) -> int:
    from edgewise import device_runtime

    report = device_runtime.probe()
    if args.json:
        print(json.dumps({
            "machine": report.machine, "cpu": report.cpu, "cores": report.cores,
            "backends": [{"format": b.format, "backend": b.backend, "installed": b.installed, "version": b.version,
                          "accelerators": [a.__dict__ for a in b.accelerators], "problem": b.problem}
                         for b in report.backends],
        }, indent=2))
        return 0
    print(f"machine: {report.machine}, {report.cpu}, {report.cores} cores")
    print("| format | backend | version | accelerators (kind, auto-selected) |")
    print("|---|---|---|---|")
    for b in report.backends:
        if not b.installed:
            print(f"| {b.format} | not installed | - | {' '.join(b.problem.split())} |")
            continue
        accs = ", ".join(f"{a.alias} ({a.kind}{'' if a.auto else ', on request'})" for a in b.accelerators)
        print(f"| {b.format} | {b.backend} | {b.version} | {accs} |")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from edgewise.sync._keys import generate_keys

    generate_keys(args.keys_dir, root=args.root, targets=args.targets)
    print(f"keys written to {args.keys_dir} (keep the root and targets keys offline)")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from edgewise.sync.publisher import Publisher

    if not (args.repo / "metadata").is_dir():
        publisher = Publisher.init(args.repo, args.keys)
        print(f"initialised repository {args.repo}; ship {publisher.trusted_root} with your app")
    else:
        publisher = Publisher(args.repo, args.keys)
    release = publisher.publish(args.bundle, channel=args.channel, rollout=args.rollout)
    print(f"published {release.model} {release.version} on {release.channel} at {release.rollout:g} % "
          f"({release.archive_length} bytes, target {release.archive})")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from edgewise.sync.publisher import Publisher

    release = Publisher(args.repo, args.keys).set_rollout(args.model, args.channel, args.percent)
    print(f"{release.model} {release.version} on {release.channel}: rollout {release.rollout:g} %")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import time

    from edgewise.sync.devserver import RepoServer

    with RepoServer(args.repo) as server:
        print(f"serving {args.repo} at {server.url} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)


def _sync(args: argparse.Namespace) -> int:
    import socket

    from edgewise.sync import DeviceProfile, SyncClient

    device = DeviceProfile(device_id=args.device_id or socket.gethostname())
    client = SyncClient(args.repo, args.store, device, trusted_root=args.trusted_root, progress=_download_progress())
    if args.rollback:
        installed = client.rollback(args.model)
        print(f"{args.model}: rolled back to {installed.version}")
        return 0
    if args.check:
        check = client.check(args.model, args.channel)
        print(f"{args.model} on {args.channel}: installed {check.installed or 'nothing'}, "
              f"published {check.release.version if check.release else 'nothing'}; {check.decision.reason}")
        return 0
    result = client.update(args.model, args.channel)
    if result.updated:
        print(f"{args.model}: installed {result.installed.version} (previous {result.installed.previous}); "
              f"{result.downloaded_bytes} bytes downloaded and verified")
    else:
        print(f"{args.model}: no update ({result.reason})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from edgewise.device_runtime._stats import format_stats, read_stats

    if not args.store.is_dir():
        raise InputError(f"{args.store} is not a directory", hint="Pass the device's model store (--store of sync).")
    observe = args.store / "observe"
    stats = read_stats(observe if observe.is_dir() else args.store)
    current = args.store / "current"
    stats["installed"] = {p.stem: json.loads(p.read_text(encoding="utf-8"))
                          for p in sorted(current.glob("*.json"))} if current.is_dir() else {}
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for model, pointer in stats["installed"].items():
        print(f"{model}: serving {pointer.get('version')} (previous {pointer.get('previous')})")
    print(format_stats(stats))
    return 0


def _download_progress():
    """A progress callback printing every 10 % of a download to stderr."""
    shown = {"step": -1}

    def report(done: int, total: int) -> None:
        step = 10 * done // max(total, 1)
        if step != shown["step"]:
            shown["step"] = step
            print(f"  download {done / 1e6:.1f} / {total / 1e6:.1f} MB ({10 * step} %)", file=sys.stderr, flush=True)

    return report


def _router_arguments(p: argparse.ArgumentParser, *, model_help: str) -> None:
    p.add_argument("--model", type=Path, help=model_help)
    p.add_argument("--config", type=Path, help="fallback TOML (endpoints, mode, deadline); flags below override")
    p.add_argument("--endpoint", help="cloud endpoint base URL (OpenAI-compatible for ask, KServe v2 for infer)")
    p.add_argument("--endpoint-model", default="", help="model name on the endpoint")
    p.add_argument("--mode", choices=["prefer_on_device", "only_on_device", "prefer_cloud", "only_cloud"])
    p.add_argument("--deadline", type=float, help="seconds for the whole request")
    p.add_argument("--insecure", action="store_true", help="do not verify the endpoint's TLS certificate")


def _router_config(args: argparse.Namespace, kind: str):
    import dataclasses

    from edgewise.fallback import Endpoint, RouterConfig, load_config

    config = load_config(args.config) if args.config else RouterConfig()
    changes: dict = {}
    if args.endpoint:
        protocol = "openai" if kind == "text" else "kserve"
        changes[kind] = Endpoint(args.endpoint, protocol=protocol, model=args.endpoint_model,
                                 verify=not args.insecure)
    if args.mode:
        changes["mode"] = args.mode
    if args.deadline:
        changes["deadline_s"] = args.deadline
    return dataclasses.replace(config, **changes) if changes else config


def _device_model(path: Path | None, **load_kwargs):
    """Load the on-device model; a model that cannot load here is reported and treated as not installed."""
    if path is None:
        return None
    from edgewise import device_runtime

    try:
        return device_runtime.load(path, **load_kwargs)
    except EdgewiseError as exc:
        print(f"device model unavailable ({exc.message}); the cloud serves", file=sys.stderr)
        return None


def _ask(args: argparse.Namespace) -> int:
    from edgewise.fallback import Router

    config = _router_config(args, "text")
    model = _device_model(args.model, engine_options={"n_ctx": args.n_ctx})
    with Router(config, text_model=model) as router:
        for prompt in args.prompt:
            messages = ([{"role": "system", "content": args.system}] if args.system else [])
            messages.append({"role": "user", "content": prompt})
            options = {"max_tokens": args.max_tokens, "temperature": args.temperature}
            if args.stream:
                stream = router.chat_stream(messages, **options)
                print(f"[{stream.served_by}: {stream.reason}] ", end="", flush=True)
                for piece in stream:
                    print(piece, end="", flush=True)
                print()
                continue
            answer = router.chat(messages, **options)
            print(answer.text.strip())
            print(f"  -> {answer.served.describe()}")
    return 0


def _infer(args: argparse.Namespace) -> int:
    from edgewise.fallback import Router

    config = _router_config(args, "tensor")
    model = _device_model(args.model)
    names = [s.name for s in model.signature.inputs] if model is not None else []
    inputs = _read_inputs(args.input, names or [f"input{i}" for i in range(len(args.input))])
    with Router(config, tensor_model=model) as router:
        answer = router.infer(inputs)
    for name, array in answer.outputs.items():
        print(f"output {name}: {array.dtype}{list(array.shape)}  {_preview(array)}")
    print(f"  -> {answer.served.describe()}")
    if args.output:
        np.savez(args.output, **answer.outputs)
        print(f"outputs written to {args.output}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from edgewise.demo import run_demo

    return run_demo(args.out, encoder=not args.no_encoder, llm=not args.no_llm)


if __name__ == "__main__":
    sys.exit(main())
