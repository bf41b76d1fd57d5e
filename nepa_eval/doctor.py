"""`nepa-eval doctor`: is this machine set up for nepa-eval runs? One table (check, result, fix), exit 1 if a check
fails. Each check is a function returning rows, so a test can break one and see it fail: package versions, mmcv's
compiled ops, devices, the SDPA backend of NEPA-B's attention, NEPA-T numerics on every device against the CPU,
torch.compile, a 1-process distributed init, the Hugging Face cache, the work directory; `--data` / `--data-root`
the runs' own data checks (nepa_eval/data/); `--bench` the cluster table (nepa_eval/bench.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

OK, WARN, FAIL = "ok", "warn", "FAIL"
PACKAGES = ("torch", "torchvision", "timm", "mmengine", "mmcv", "mmseg")
DIST = {"mmseg": "mmsegmentation"}  # import name -> distribution name
# relative L2 error of features and gradients against CPU float32 (measured on a CPU: float32 0, bf16 9e-3;
# float32 on a GPU may use TF32 convolutions)
FP32_TOL, BF16_TOL = 5e-3, 5e-2
MIN_FREE_GIB, LOW_FREE_GIB = 1.0, 20.0  # below: fail / warn (NEPA-B checkpoints with AdamW state are ~1.3 GB each)
SETUP = "run scripts/setup.sh (NEPA_TORCH_SPEC=... for another torch)"


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


@dataclass
class Row:
    check: str
    status: str  # ok / warn / FAIL
    result: str
    fix: str = ""


# ----------------------------------------------------------------------------------------------
# the checks
# ----------------------------------------------------------------------------------------------
def check_versions() -> list[Row]:
    """Each package imports (mmseg's import checks its own mmcv range, mmcv's its mmengine range), meets
    pyproject.toml's pins, and torchvision is the release built for this torch (0.(minor+15) for torch 2.x)."""
    import importlib
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    pins = {}
    try:
        pins = {r.name.lower(): r for r in map(Requirement, requires("nepa-eval") or []) if not r.marker}
    except PackageNotFoundError:
        pass
    found, problems = [], []
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # an import that fails is the finding, whatever it raises
            problems.append(f"{name} does not import ({_why(e)})")
            continue
        v = getattr(mod, "__version__", None) or version(DIST.get(name, name))
        found.append(f"{name} {v}")
        pin = pins.get(DIST.get(name, name).lower())
        if pin is not None and pin.specifier and not pin.specifier.contains(str(v).split("+")[0], prereleases=True):
            problems.append(f"{name} {v} outside nepa-eval's pin {pin.specifier}")
    tv = _minor("torchvision")
    if tv is not None and _minor("torch") is not None and _minor("torch")[0] == 2 and tv[1] != _minor("torch")[1] + 15:
        problems.append(f"torchvision {version('torchvision')} is not the release for torch {torch.__version__} "
                        f"(0.{_minor('torch')[1] + 15}.x)")
    return [Row("versions", FAIL if problems else OK, "; ".join(problems + found),
                f"{SETUP}; the pins are in pyproject.toml" if problems else "")]


def _minor(dist: str) -> Optional[tuple[int, int]]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(x) for x in version(dist).split("+")[0].split(".")[:2])  # type: ignore[return-value]
    except (PackageNotFoundError, ValueError):
        return None


def check_mmcv_ops(devices: list[torch.device]) -> list[Row]:
    """mmcv's compiled extension imports (an ABI mismatch with torch fails here), was built with CUDA when a GPU is
    visible (and for torch's CUDA version), and one compiled op (nms) gives the right answer on every device."""
    fix = ("rebuild mmcv for this torch/CUDA: delete its cached wheel (~/.cache/nepa-eval/wheels/mmcv-*) and " + SETUP)
    try:
        import mmcv._ext  # noqa: F401  (the compiled ops)
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version, nms
    except Exception as e:
        return [Row("mmcv ops", FAIL, f"compiled ops missing ({_why(e)})",
                    fix)]
    built_cuda = get_compiling_cuda_version()
    info = f"built with {get_compiler_version()}, CUDA {built_cuda}"
    if torch.cuda.is_available():
        if built_cuda in ("not available", "", None):
            return [Row("mmcv ops", FAIL, info + ": no CUDA ops, but a GPU is visible", fix)]
        if torch.version.cuda and built_cuda.split(".")[:1] != torch.version.cuda.split(".")[:1]:
            return [Row("mmcv ops", FAIL, f"{info}, torch has CUDA {torch.version.cuda}", fix)]
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    for dev in devices:
        try:
            _, keep = nms(boxes.to(dev), scores.to(dev), iou_threshold=0.5)
            good = keep.cpu().tolist() == [0, 2]
        except Exception as e:
            return [Row("mmcv ops", FAIL, f"{info}; nms on {dev}: {_why(e)}", fix)]
        if not good:
            return [Row("mmcv ops", FAIL, f"{info}; nms on {dev} kept {keep.cpu().tolist()}, expected [0, 2]", fix)]
    return [Row("mmcv ops", OK, f"{info}; nms right on {', '.join(map(str, devices))}")]


def check_devices(devices: list[torch.device]) -> list[Row]:
    """CPU (threads, bf16 units) and each GPU: name, compute capability, bf16, free memory."""
    rows = []
    for dev in devices:
        if dev.type == "cpu":
            bf16 = bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()
                        and torch.ops.mkldnn._is_mkldnn_bf16_supported())
            rows.append(Row("device cpu", OK, f"{_cpu_name()}, {torch.get_num_threads()} threads, bf16 units: "
                                              f"{'yes' if bf16 else 'no (bf16 runs emulated, slowly)'}"))
            continue
        p = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        bf16 = torch.cuda.is_bf16_supported()
        rows.append(Row(f"device {dev}", OK if bf16 else WARN,
                        f"{p.name}, capability {p.major}.{p.minor}, bf16 {'yes' if bf16 else 'no'}, "
                        f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free",
                        "" if bf16 else "no bf16: set optim_wrapper.dtype=float16 or train in float32"))
    if not any(d.type == "cuda" for d in devices) and os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1"):
        rows.append(Row("device cuda", WARN, f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} but torch "
                                             f"sees no GPU (torch {torch.__version__}, CUDA {torch.version.cuda})",
                        "install a CUDA build of torch (NEPA_TORCH_SPEC) or check the driver (nvidia-smi)"))
    return rows


def _cpu_name() -> str:
    import platform

    info = Path("/proc/cpuinfo")
    names = [x.split(":", 1)[1].strip() for x in info.read_text().splitlines() if x.startswith("model name")] \
        if info.is_file() else []
    return names[0] if names else platform.processor() or "cpu"


def sdpa_choices(dev: torch.device, depth: int = 1, img_size: int = 224, batch: int = 1) -> dict[str, str]:
    """The SDPA backend each attention mode of NEPA-B (patch 14, 257 tokens, 12 heads of 64) takes on `dev`, under
    bf16 autocast on a GPU: the arguments of the model's own scaled_dot_product_attention call, given to torch's
    dispatcher (torch._fused_sdp_choice) with the dtype autocast gives them."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend

    from backbones.nepa import NepaViT
    from backbones.nepa.model import SIZES

    names = {int(b.value): b.name.lower() for b in SDPBackend.__members__.values()}
    seen: list[str] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kw):
        dt = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else q.dtype
        seen.append(names.get(int(torch._fused_sdp_choice(q.to(dt), k.to(dt), v.to(dt), *args, **kw)), "?"))
        return real(q, k, v, *args, **kw)

    out = {}
    for mode, causal in (("causal", True), ("bidirectional", False)):
        model = NepaViT(**{**SIZES["base"], "depth": depth}, img_size=img_size, patch_size=14, causal=causal).to(dev)
        x = torch.randn(batch, 3, img_size, img_size, device=dev)
        seen.clear()
        F.scaled_dot_product_attention = spy
        try:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                model.forward_features(x)  # with gradients, as in training (a backend's eligibility may differ)
        finally:
            F.scaled_dot_product_attention = real
        out[mode] = ",".join(sorted(set(seen))) or "none"
    return out


def check_sdpa(devices: list[torch.device]) -> list[Row]:
    rows = []
    for dev in devices:
        ch = sdpa_choices(dev)
        slow = dev.type == "cuda" and any(v == "math" for v in ch.values())
        rows.append(Row(f"sdpa {dev}", WARN if slow else OK,
                        f"NEPA-B (257 tokens, head 64{', bf16' if dev.type == 'cuda' else ', float32'}): "
                        + ", ".join(f"{k} -> {v}" for k, v in ch.items()),
                        "the math kernel is the slow one: check the GPU's capability and torch's CUDA build"
                        if slow else ""))
    return rows


def forward_backward(model: torch.nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype]) -> list[torch.Tensor]:
    """Features of one forward and every parameter gradient of a scalar loss, as float32 on the CPU."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model.forward_features(x)
    out.float().square().mean().backward()
    return [out.detach().float().cpu()] + [p.grad.detach().float().cpu() for p in model.parameters()
                                           if p.grad is not None]


def rel_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Relative L2 error of a against the reference b, over all the tensors together."""
    num = sum(float((x - y).double().square().sum()) for x, y in zip(a, b))
    den = sum(float(y.double().square().sum()) for y in b)
    return (num / max(den, 1e-30)) ** 0.5


def check_numerics(devices: list[torch.device], img_size: int = 112, batch: int = 2) -> list[Row]:
    """NEPA-T (causal and bidirectional) forward + backward on every device, float32 and bf16 autocast, against
    the CPU float32 result: relative L2 error of features and gradients within FP32_TOL / BF16_TOL."""
    from backbones.nepa import NepaViT

    # NEPA-T without LayerScale (at its 1e-5 init the blocks barely touch the output, so a wrong attention or MLP
    # would hide) and without the random RoPE rescale (the same computation on every device)
    arch = dict(embed_dim=192, depth=12, num_heads=3, img_size=img_size, patch_size=14, layerscale_init=None,
                rope_rescale=None)
    rows = []
    for causal in (True, False):
        torch.manual_seed(0)
        ref_model = NepaViT(**arch, causal=causal)
        x = torch.randn(batch, 3, img_size, img_size)
        ref = forward_backward(ref_model, x, None)
        for dev in devices:
            model = NepaViT(**arch, causal=causal).to(dev)
            model.load_state_dict(ref_model.state_dict())
            for dname, dt, tol in (("float32", None, FP32_TOL), ("bf16", torch.bfloat16, BF16_TOL)):
                err = rel_error(forward_backward(model, x.to(dev), dt), ref)
                bad = not err <= tol  # NaN fails too
                rows.append(Row(f"NEPA-T {'causal' if causal else 'bidir.'} {dev} {dname}", FAIL if bad else OK,
                                f"features + grads vs CPU float32: rel. error {err:.1e} (tolerance {tol:.0e})",
                                "a wrong result on this device: update the driver / torch, and report it with this "
                                "table" if bad else ""))
    return rows


def check_compile(dev: torch.device) -> list[Row]:
    """torch.compile (inductor, what --compile uses) of a small MLP, forward and backward, equal to eager."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 1)).to(dev)
    x = torch.randn(8, 16, device=dev)
    fix = ("torch.compile needs a C++ compiler on CPUs (gcc/g++) and Triton on GPUs; run without --compile "
           "until it works")
    t = time.perf_counter()
    try:
        got = torch.compile(net)(x)
        got.sum().backward()
        g = net[0].weight.grad.clone()
        net.zero_grad()
        want = net(x)
        want.sum().backward()
    except Exception as e:
        return [Row(f"compile {dev}", FAIL, _why(e), fix)]
    finally:
        torch._dynamo.reset()
    err = max((got - want).abs().max().item(), (g - net[0].weight.grad).abs().max().item())
    good = err < 1e-4
    return [Row(f"compile {dev}", OK if good else FAIL,
                f"inductor forward + backward in {time.perf_counter() - t:.1f} s, max diff to eager {err:.1e}",
                "" if good else fix)]


def check_distributed(dev: torch.device) -> list[Row]:
    """A 1-process group with the backend runs use (NCCL on GPUs, gloo on CPUs, as engine.prepare_env chooses),
    and one all-reduce."""
    import datetime

    import torch.distributed as dist

    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dist.is_initialized():
        return [Row(f"distributed {backend}", OK, "a process group is already running (under torchrun?): skipped")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=60))
        t = torch.ones(4, device=dev if backend == "nccl" else "cpu")
        dist.all_reduce(t)
        good = t.sum().item() == 4
    except Exception as e:
        return [Row(f"distributed {backend}", FAIL, _why(e),
                    "check torch's distributed build (NCCL for GPUs) and that 127.0.0.1 ports can be opened")]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return [Row(f"distributed {backend}", OK if good else FAIL, "1-process init and all-reduce" +
                ("" if good else ": wrong sum"), "" if good else "report this table")]


def check_hf() -> list[Row]:
    """Where the weight door's Hugging Face ids are cached, whether that is writable, offline state."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    offline = bool(constants.HF_HUB_OFFLINE)
    nepa = sorted(p.name[len("models--"):].replace("--", "/") for p in cache.glob("models--*")
                  if "nepa" in p.name.lower())
    where = cache if cache.exists() else _existing_parent(cache)
    writable = _writable(where)
    mode = "offline (HF_HUB_OFFLINE=1): ids load from the cache only" if offline else "online"
    result = (f"hub cache {cache} ({'writable' if writable else 'NOT writable'}), NEPA models cached: "
              f"{', '.join(nepa) or 'none'}; {mode}")
    if not writable and not offline:
        return [Row("hugging face", WARN, result, "set HF_HOME (or HF_HUB_CACHE) to a writable folder")]
    return [Row("hugging face", OK, result)]


def _existing_parent(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(d: Path) -> bool:
    """A file can be created in d (tried, not guessed from permission bits: root ignores those)."""
    try:
        fd, name = tempfile.mkstemp(dir=d, prefix=".nepa-doctor-")
        os.close(fd)
        os.unlink(name)
        return True
    except OSError:
        return False


def check_work_dir(work_dir: str) -> list[Row]:
    """The work directory (or the folder it would be made in) is writable and has free disk."""
    p = Path(work_dir)
    where = p if p.is_dir() else _existing_parent(p)
    if not where.is_dir() or not _writable(where):
        return [Row("work dir", FAIL, f"{work_dir}: cannot write in {where}",
                    "give --work-dir a folder you can write to (runs write checkpoints and final_metrics.json there)")]
    free = shutil.disk_usage(where).free / 2**30
    status = FAIL if free < MIN_FREE_GIB else WARN if free < LOW_FREE_GIB else OK
    return [Row("work dir", status, f"{work_dir}: writable, {free:.1f} GiB free",
                "" if status == OK else f"free disk (a NEPA-B checkpoint is ~1.3 GB; runs keep 2): "
                                        f"below {MIN_FREE_GIB:g} GiB fails, below {LOW_FREE_GIB:g} GiB warns")]


SEG_CONFIG = "seg_configs/nepa/nepa-b_upernet_8xb2-160k_ade20k-512x512.py"  # ADE20K's classes


def check_data(data: Optional[str], data_root: Optional[str], seg_config: str = SEG_CONFIG) -> list[Row]:
    """--data: resolved as pretrain / cls / knn resolve it (nepa_eval/data/resolve.py); --data-root: the
    segmentation layout check seg runs first (nepa_eval/data/ade.py), with the classes of --seg-config."""
    rows = []
    if data:
        from nepa_eval.data.resolve import resolve_data

        try:
            spec = resolve_data(data, labelled=False)
            rows.append(Row("data", OK, f"{data}: {spec.source} {spec.root or ''}, splits {', '.join(spec.splits)}"))
        except Exception as e:
            rows.append(Row("data", FAIL, f"{data}: {e}", "see README 'Where your weights and data can be'"))
    if data_root:
        from mmengine.config import Config

        from nepa_eval.data.ade import check_seg_root
        from nepa_eval.engine import resolve_config_path
        from nepa_eval.tasks.seg import label_spec

        try:
            counts = check_seg_root(data_root, *label_spec(Config.fromfile(str(resolve_config_path(seg_config)))))
            rows.append(Row("seg data", OK, f"{data_root}: {counts}"))
        except Exception as e:
            rows.append(Row("seg data", FAIL, f"{data_root}: {e}", "nepa-eval seg --help (the ADE20K layout)"))
    return rows


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------
def devices_of(arg: str) -> list[torch.device]:
    """'auto': every GPU, else the CPU; 'cpu' / 'cuda' / 'cuda:N' as given."""
    if arg == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device(f"cuda:{i}") for i in range(n)] or [torch.device("cpu")]
    return [torch.device(arg)]


def run_checks(args: argparse.Namespace) -> list[Row]:
    devices = devices_of(args.device)
    main = devices[0]
    checks: list[Callable[[], list[Row]]] = [
        check_versions, lambda: check_mmcv_ops(devices), lambda: check_devices(devices),
        lambda: check_sdpa(devices), lambda: check_numerics(devices), lambda: check_compile(main),
        lambda: check_distributed(main), check_hf, lambda: check_work_dir(args.work_dir),
        lambda: check_data(args.data, args.data_root, args.seg_config)]
    rows: list[Row] = []
    for check in checks:
        try:
            rows += check()
        except Exception as e:  # a check that crashes is a failed check, named, never a traceback instead of the table
            name = getattr(check, "__name__", "check")
            rows.append(Row(name, FAIL, f"the check itself failed: {_why(e)}", "report this table"))
    return rows


def format_table(rows: list[Row]) -> str:
    cell = lambda s: str(s).replace("|", "/").replace("\n", " ")  # noqa: E731
    lines = ["| check | result | fix |", "|---|---|---|"]
    lines += [f"| {cell(r.check)} | {r.status}: {cell(r.result)} | {cell(r.fix)} |" for r in rows]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (every GPU, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--work-dir", default="work_dirs", help="where runs will write: checked for writing and free "
                                                          "disk [%(default)s]")
    p.add_argument("--data", help="also resolve this --data value as pretrain / cls / knn would")
    p.add_argument("--data-root", help="also check this segmentation data root (ADE20K layout) as seg would")
    p.add_argument("--seg-config", default=SEG_CONFIG,
                   help="the segmentation config whose classes --data-root is checked against [%(default)s]")
    p.add_argument("--bench", action="store_true",
                   help="then the cluster benchmark table (nepa-eval bench cluster): NEPA-B pretraining MFU (bf16, "
                        "eager and compiled), NEPA-B + UPerNet vs MAE-B, fine-tune step vs timm's ViT-B; full "
                        "sizes on a GPU, small ones on a CPU")
    p.add_argument("--warmup", type=int, default=1, help="--bench: warm-up steps per row (compiled rows at least 2)")
    p.add_argument("--iters", type=int, default=3, help="--bench: timed steps per row (median)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(args: argparse.Namespace) -> int:
    t = time.perf_counter()
    rows = run_checks(args)
    failed = [r for r in rows if r.status == FAIL]
    print(f"# nepa-eval doctor: {len(rows)} rows, {len(failed)} failed, "
          f"{sum(r.status == WARN for r in rows)} warnings ({time.perf_counter() - t:.0f} s)")
    print(format_table(rows), flush=True)
    if getattr(args, "bench", False):
        from nepa_eval.bench import bench_cluster

        bench_cluster(args)
    return 1 if failed else 0
