"""The kinds of placed volume a heron-io serves: one alias, so the process (io) and its
background work (maintenance) name them without importing each other."""

from heron.ardfs.erasure import ErasureVolume
from heron.ardfs.replicated import ReplicatedVolume

AnyVolume = ReplicatedVolume | ErasureVolume
