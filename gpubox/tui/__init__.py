"""The Textual dashboard; the only package of gpubox that imports textual."""
