// Where a run is (step, epoch, mode), as the Swift side sees it and as plugins receive it.

import CEspalierSDK

public struct RunState: Sendable, Equatable {
    public var training = true
    public var step = 0
    public var totalSteps = 0
    public var epoch = 0
    public var totalEpochs = 0
    public var learningRate = 0.0
    public var dryRun = false

    public init() {}

    public var c: es_run_state {
        var s = es_run_state()
        s.struct_size = UInt32(MemoryLayout<es_run_state>.size)
        s.training = training ? 1 : 0
        s.step = Int64(step); s.total_steps = Int64(totalSteps)
        s.epoch = Int64(epoch); s.total_epochs = Int64(totalEpochs)
        s.learning_rate = learningRate
        s.dry_run = dryRun ? 1 : 0
        return s
    }
}
