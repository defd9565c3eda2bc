// Kernels skip the zero-initialisation of locals: ILGPU would otherwise store zeros into every inline-PTX operand's
// local slot at the kernel's start, which keeps ptxas from moving those slots into registers.
[module: System.Runtime.CompilerServices.SkipLocalsInit]
