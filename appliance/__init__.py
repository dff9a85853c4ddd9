"""Privacy-by-design video-protection appliance.

Raw pixels live only in the pixel process's RAM; what leaves the box is a sealed clip,
and only when a legal profile permits the behaviour that triggered it.
"""

__version__ = "0.1.0"
