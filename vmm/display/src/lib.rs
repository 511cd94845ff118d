//! Virtio gpu (2D) and input devices, framebuffer export.
