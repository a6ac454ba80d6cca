"""The MSST format (ZFTurbo's Music-Source-Separation-Training): MDX23C and the band-split
RoFormers, their configs and checkpoints, and MSST's chunked inference."""
