//! virtio-blk: a raw image file as the guest's disk.
