// Decode steps replayed as one launch. A decode step is ~10 kernels a layer; queued one by one, the host's launch work
// and the gaps between kernels cost a large share of a step that reads the weights once. So the step is queued once
// into a CUDA graph (stream capture) and the graph is relaunched for later steps: the kernels that depend on the step
// (the embedding's token, Rope's and Attention's position) read it from a small device buffer written before each
// replay, and Attention's splits are sized for the step's bucket of lengths, so one graph serves every position of a
// bucket. A step's first run of a key queues its ops directly (uploading any table it needs), the second captures, and
// later ones replay. ILGPU's CPU accelerator has no graphs: it records the launches and replays the recording, with
// the recorded arguments, which checks the same property (a replay follows the device scalars alone) in CI.
// H200, Llama-2-7B: tg128 226 t/s with graphs against 208 op by op, tg128 at depth 16384 149 against 144.
// Exercised by tests/GpuOpsTests.cs (decode-step cases) and every ILGPU-CPU model test that decodes.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using LlamaRun.Core;
using LlamaRun.Kernels;

namespace LlamaRun.Backends.Gpu;

public sealed unsafe partial class GpuBackend
{
    private MemoryBuffer1D<int, Stride1D.Dense>? _stepScalars;   // [DecodeStep.Count]: the step's token and position
    private StepState? _inStep;                                  // the decode step being queued, if any

    /// <summary>Decode steps replayed so far (each launch of a captured or recorded step), for tests and benchmarks.</summary>
    public long DecodeStepReplays { get; private set; }

    // The step being queued: its token, position, and the key length its attention is sized for.
    private readonly record struct StepState(int Token, int Position, int BucketLength);

    /// <summary>
    /// LLAMA_DECODE_GRAPH: 1 (the default) replays decode steps (CUDA graphs on a GPU, recorded launches on ILGPU's CPU
    /// accelerator), 0 queues every op of every step.
    /// </summary>
    public static bool? DecodeGraphSetting => Setting("LLAMA_DECODE_GRAPH");

    /// <summary>The key length a step at this many keys has its attention sized for: a multiple of 256 (of 1024 past 4096).</summary>
    public static int StepBucket(int length)
    {
        int unit = length <= 4096 ? 256 : 1024;
        return (length + unit - 1) / unit * unit;
    }

    /// <summary>How this backend runs decode steps: "CUDA graphs", "recorded launches" or "op by op" (for logs).</summary>
    public string DecodeStepMode => !Replays ? (DecodeGraphSetting ?? true ? "op by op (the driver has no CUDA graphs)" : "op by op")
        : _accelerator is CudaAccelerator ? "CUDA graphs" : "recorded launches";

    private long _programmaticEdges;   // made in the graphs captured so far

    /// <summary>Programmatic dependent launch between a decode graph's kernels (GridDependencies): "on (N edges so far)" or "off".</summary>
    public string ProgrammaticMode => _loader!.Programmatic ? $"on ({_programmaticEdges} edges)" : "off";

    // Whether decode steps replay: unless LLAMA_DECODE_GRAPH=0, where the accelerator can (CUDA needs the driver's graphs).
    private bool Replays => (DecodeGraphSetting ?? true) && (_accelerator is not CudaAccelerator || GpuNative.HasGraphs);

    public IDecodeSteps? CreateDecodeSteps() => Replays ? new DecodeSteps(this, _accelerator is CudaAccelerator) : null;

    // The device view of the step scalars (valid memory outside a step too: kernels read it only with StepPosition).
    private ArrayView<int> StepView => _stepScalars!.View;

    // Inside a decode step an op must be for the step's single token and position; true when it is in one.
    private bool InStep(int startPos, int tokens, string op)
    {
        if (_inStep is not { } s) return false;
        if (tokens != 1 || startPos != s.Position)
            throw new InvalidOperationException($"{op} of {tokens} token(s) at position {startPos} inside the decode step of position {s.Position}");
        return true;
    }

    // Ops that wait, copy or allocate cannot be part of a replayed step.
    private void NotInStep(string op)
    {
        if (_inStep is not null) throw new InvalidOperationException($"{op} inside a decode step (a replayed step only queues kernels)");
    }

    private sealed class DecodeSteps(GpuBackend backend, bool cuda) : IDecodeSteps
    {
        private const int MaxReplays = 8, MaxWarmed = 64;

        private readonly Dictionary<(object Key, int Bucket), Replay> _replays = [];
        private readonly HashSet<(object Key, int Bucket)> _warmed = [];
        private readonly int[] _scalars = new int[DecodeStep.Count];
        private long _clock;
        private bool _graphsFailed, _disposed;

        public void Run(int token, int position, object key, Action enqueue)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var b = backend;
            b._accelerator.Bind();
            if (b._inStep is not null) throw new InvalidOperationException("a decode step is already being queued");
            var state = new StepState(token, position, StepBucket(position + 1));
            var id = (key, state.BucketLength);
            _scalars[DecodeStep.Token] = token;
            _scalars[DecodeStep.Position] = position;
            fixed (int* p = _scalars) b.StepView.CopyFromCPUUnsafeAsync(b._stream, ref *p, DecodeStep.Count);   // staged before return

            if (_replays.TryGetValue(id, out var replay))
            {
                if (replay.Uploads == b._rope.Uploads)
                {
                    replay.LastUsed = ++_clock;
                    replay.Launch();
                    b.DecodeStepReplays++;
                    return;
                }
                _replays.Remove(id);   // a table it reads was moved or replaced: run anew
                replay.Dispose();
                _warmed.Remove(id);
            }
            if (_graphsFailed || _warmed.Add(id))
            {
                if (_warmed.Count > MaxWarmed) _warmed.Clear();
                Eager(state, enqueue);
                return;
            }
            _warmed.Remove(id);
            replay = cuda ? CaptureGraph(state, enqueue) : Record(state, enqueue);
            if (replay is null)
            {
                Eager(state, enqueue);
                return;
            }
            replay.Uploads = b._rope.Uploads;
            replay.LastUsed = ++_clock;
            if (_replays.Count >= MaxReplays)
            {
                var oldest = _replays.MinBy(r => r.Value.LastUsed);
                _replays.Remove(oldest.Key);
                oldest.Value.Dispose();
            }
            _replays[id] = replay;
            replay.Launch();
            b.DecodeStepReplays++;
        }

        // Queues the step's ops as they are called (the device scalars already hold its token and position).
        private void Eager(StepState state, Action enqueue)
        {
            backend._inStep = state;
            try
            {
                enqueue();
            }
            finally
            {
                backend._inStep = null;
            }
        }

        // ILGPU's CPU accelerator: the launches recorded, to be replayed with the recorded arguments.
        private Replay Record(StepState state, Action enqueue)
        {
            var launches = new List<RecordedLaunch>();
            backend._launch.Recording = launches;
            try
            {
                Eager(state, enqueue);
            }
            finally
            {
                backend._launch.Recording = null;
            }
            return new RecordedReplay(backend._launch, launches);
        }

        // CUDA: the launches captured into a graph (not run); null when the driver refused the capture (said once on stderr).
        private Replay? CaptureGraph(StepState state, Action enqueue)
        {
            nint stream = ((CudaStream)backend._stream).StreamPtr;
            try
            {
                GpuNative.BeginCapture(stream);
            }
            catch (GpuException e)
            {
                return Refused(e);
            }
            try
            {
                Eager(state, enqueue);
            }
            catch (Exception e)
            {
                try
                {
                    GpuNative.DestroyGraph(GpuNative.EndCapture(stream, null, out _));   // ends the capture; the graph is not used
                }
                catch (GpuException)
                {
                    // the capture was invalidated by the failure itself
                }
                if (e is GpuException or CudaException) return Refused(e);
                throw;
            }
            try
            {
                var loader = backend._loader!;
                nint exec = GpuNative.EndCapture(stream, loader.Programmatic ? loader.Waits : null, out int edges);
                backend._programmaticEdges += edges;
                return new GraphReplay(exec, stream);
            }
            catch (GpuException e)
            {
                return Refused(e);
            }
        }

        private Replay? Refused(Exception e)
        {
            _graphsFailed = true;
            Console.Error.WriteLine($"llama-run: decode steps run without CUDA graphs: {e.Message.Split('\n')[0]}");
            return null;
        }

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            if (!backend._disposed)
                foreach (var r in _replays.Values) r.Dispose();   // a disposed backend's context freed them
            _replays.Clear();
        }
    }

    // A step that can be relaunched: the table uploads it saw (stale once they change) and when it was last used.
    private abstract class Replay : IDisposable
    {
        public long Uploads { get; set; }
        public long LastUsed { get; set; }

        public abstract void Launch();

        public virtual void Dispose()
        {
        }
    }

    private sealed class GraphReplay(nint exec, nint stream) : Replay
    {
        public override void Launch() => GpuNative.Launch(exec, stream);

        public override void Dispose() => GpuNative.DestroyGraph(exec);   // freed when its queued launches finish
    }

    private sealed class RecordedReplay(GpuKernels kernels, List<RecordedLaunch> launches) : Replay
    {
        public override void Launch()
        {
            foreach (var l in launches) kernels.Run(l);
        }
    }
}
