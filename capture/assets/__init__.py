"""Model packs: discovery, the official DECA/FLAME file readers, and the synthetic demo pack."""
from .locate import DEMO, cache_dir, ensure_demo_pack, open_pack, resolve_pack_dir
from .official import PACK_FILES, AssetError, FileProblem, inspect_pack, load_pack
from .pack import AlbedoModel, FlameModel, LandmarkEmbedding, ModelPack, UVLayout


def write_demo_pack(path, seed: int = 0, n_vertices=None):
    """Write the synthetic demo pack (official file formats) into `path`; returns the folder."""
    from .demo import write_demo_pack as _write

    return _write(path, seed=seed, n_vertices=n_vertices)


__all__ = [
    "DEMO", "PACK_FILES", "AlbedoModel", "AssetError", "FileProblem", "FlameModel", "LandmarkEmbedding",
    "ModelPack", "UVLayout", "cache_dir", "ensure_demo_pack", "inspect_pack", "load_pack", "open_pack",
    "resolve_pack_dir", "write_demo_pack",
]
