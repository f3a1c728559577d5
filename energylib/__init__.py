"""energylib — attention layers as optimization steps on energies.

Modules: :mod:`energylib.energies` (local and global energies), :mod:`energylib.optimizers`
(GD, heavy ball, Nesterov, Newton), :mod:`energylib.attention` (the attention forms),
:mod:`energylib.recipes` (local x global x optimizer -> attention, with the tying maps).
"""

__version__ = "0.1.0"
