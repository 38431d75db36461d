"""The benchmark harness, by job:

- cases: the op cases at ProGAN training sizes, their cost model, and the sweeps that choose them;
- kernels: running and checking a case on a backend, the rows and summary of the kernel report;
- timing: the CUDA-event clock, median GPU times, rounds planning, the measured ceilings, time budgets;
- device: facts about the machine (torch, CUDA, NVML) and whether a GPU is there;
- steps: the training-step table: the trainer's own step per column and resolution, and the projected
  official schedule;
- reports: Markdown and JSON reports, the results folder, and `python -m benchmarks.harness.reports summary`.

Only timing (and what uses it) needs a GPU; everything else runs anywhere, and the tests check it on CPU.
"""
