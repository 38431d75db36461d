"""The progressive schedule: which resolution, which alpha and which minibatch at a given count of images shown.

4x4 trains stable first; every later resolution first fades in (alpha 0 -> 1, linear in images shown), then
trains stable. Phases of zero length are skipped. alpha is a pure function of images shown, so the host knows
it without reading anything back from the device, and a resumed run continues with the same alphas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List

from ..cli import OptionError


@dataclass(frozen=True)
class Phase:
    resolution: int
    fading: bool
    start: int  # images shown when the phase begins
    length: int  # images

    @property
    def end(self) -> int:
        return self.start + self.length

    def alpha(self, shown: int) -> float:
        if not self.fading:
            return 1.0
        return min(1.0, max(0.0, (shown - self.start) / self.length))


class Schedule:
    def __init__(self, resolution: int, stable_images: int, fade_images: int, minibatch: Dict[int, int]):
        if stable_images < 0 or fade_images < 0:
            raise OptionError("stable_kimg", f"stable and fade phase lengths must be >= 0 images, got "
                                             f"{stable_images} and {fade_images}")
        self.resolutions = [4 * 2 ** k for k in range(int(math.log2(resolution)) - 1)]
        missing = [res for res in self.resolutions if res not in minibatch]
        if missing:
            raise OptionError("minibatch", f"no minibatch size for resolution(s) {missing}; give them with "
                                           f"--minibatch RES:SIZE,... (e.g. --minibatch {missing[0]}:16)")
        self.minibatch = {res: minibatch[res] for res in self.resolutions}
        self.phases: List[Phase] = []
        start = 0
        for res in self.resolutions:
            for fading, length in ((True, fade_images if res > 4 else 0), (False, stable_images)):
                if length > 0:
                    self.phases.append(Phase(res, fading, start, length))
                    start += length
        if start == 0:
            raise OptionError("stable_kimg", f"--stable-kimg and --fade-kimg leave no images to train up to "
                                             f"{resolution}x{resolution} (phases of 0 images); raise --stable-kimg")
        self.total_images = start

    def phase_at(self, shown: int) -> Phase:
        """The phase that the step starting at `shown` images belongs to (the last one once the schedule is done)."""
        for phase in self.phases:
            if shown < phase.end:
                return phase
        return self.phases[-1]

    def resolution_end(self, resolution: int) -> int:
        """Images shown when training at `resolution` ends."""
        return max(phase.end for phase in self.phases if phase.resolution == resolution)
