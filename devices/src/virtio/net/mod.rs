//! virtio-net: a host TAP device as the guest's network card.
