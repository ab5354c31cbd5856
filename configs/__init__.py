"""The presets, one TOML file each (`lmforge presets` lists them); installed with the package as lmforge.presets."""
