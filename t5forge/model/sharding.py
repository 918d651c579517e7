"""Device meshes and the rules that map logical axis names onto them.

Every parameter and activation carries logical axis names (layers.py). A mesh has three axes:
`data` (pure data parallelism: parameters replicated), `fsdp` (data parallelism with
parameters, gradients and optimizer state sharded along `embed`) and `tensor` (Megatron-style
model parallelism over heads, MLP units and vocabulary). The batch is split over data x fsdp.
On many hosts the same code runs on every host after `jax.distributed.initialize()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("joined_kv", "tensor"),
    ("relpos_buckets", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def parse_mesh_spec(spec: str | None) -> dict[str, int]:
    """ "data=2,fsdp=4,tensor=1" -> sizes; one axis may be -1 (all remaining devices)."""
    sizes = {"data": -1, "fsdp": 1, "tensor": 1}
    if not spec:
        return sizes
    given: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in MESH_AXES:
            raise ValueError(f"--mesh {spec!r}: expected data=N,fsdp=N,tensor=N")
        try:
            given[name] = int(value)
        except ValueError:
            raise ValueError(f"--mesh {spec!r}: {name} must be an integer") from None
    if "data" not in given and any(v == -1 for v in given.values()):
        sizes["data"] = 1
    sizes.update(given)
    return sizes


def make_mesh(
    sizes: Mapping[str, int] | str | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all hosts)."""
    if sizes is None or isinstance(sizes, str):
        sizes = parse_mesh_spec(sizes)
    devices = list(jax.devices() if devices is None else devices)
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    described = ",".join(f"{a}={n}" for a, n in zip(MESH_AXES, shape, strict=True))
    if shape.count(-1) > 1:
        raise ValueError(f"mesh {described}: only one axis may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh {described} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh {described} needs {int(np.prod(shape))} devices, {len(devices)} available"
        )
    try:
        grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # noqa: BLE001 - fall back to plain order (e.g. CPU devices)
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes that do not divide the dimension they shard (then it is replicated)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        if axes is None:
            fitted.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        kept = []
        size = 1
        for name in names:
            if dim % (size * mesh.shape[name]) == 0:
                kept.append(name)
                size *= mesh.shape[name]
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*fitted)


def boxed_shapes(boxed_tree):
    """Shapes of a tree of (abstract) boxed params, without unboxing (which would apply
    sharding constraints inside a mesh context)."""
    return jax.tree.map(
        lambda x: x.value.shape if isinstance(x, nn.Partitioned) else x.shape,
        boxed_tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def logical_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a tree of (abstract) params boxed with logical axis names."""
    logical_specs = nn.get_partition_spec(boxed_tree)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    shapes = boxed_shapes(boxed_tree)
    return jax.tree.map(
        lambda spec, shape: NamedSharding(mesh, _fit(spec, shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays (batch, length) split over data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
