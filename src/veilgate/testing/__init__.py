"""Test and demo support: throwaway network topologies in network namespaces."""

from veilgate.testing.netns import Topology

__all__ = ["Topology"]
