"""The MSST format (ZFTurbo's Music-Source-Separation-Training): MDX23C and the band-split RoFormers."""
