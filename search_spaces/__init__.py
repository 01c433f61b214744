"""Search spaces: NNI model spaces for SSL heads and backbones, each registry keyed by the name a config says."""
from search_spaces.backbones import build_backbone
from search_spaces.head_spaces import HEAD_SPACES
from search_spaces.network import SSLNetworkSpace

__all__ = ["build_backbone", "HEAD_SPACES", "SSLNetworkSpace"]
