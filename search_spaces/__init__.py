"""Search spaces: NNI model spaces for SSL heads (and backbones), keyed by name."""
from search_spaces.backbones import build_backbone
from search_spaces.network import HEAD_SPACES, SSLNetworkSpace

__all__ = ["build_backbone", "HEAD_SPACES", "SSLNetworkSpace"]
