// Where a search is: epochs finished, steps taken over the whole run, what the current epoch
// has counted (EpochTally.swift), and the steps of this process with the limit a test may set on
// them. The epoch, the step and the tally's counts are checkpointed (SearchRun+Checkpoint.swift),
// so a resumed run goes on from the same place; the last two belong to the process.

/// The trainer's (`SearchRun`'s) position in its run: its loop (and a prediction's simulated
/// epochs) advance it, its checkpoints save it and a resume restores it.
struct SearchPosition {
    /// Epochs finished.
    var epoch = 0
    /// Steps taken over the whole run (every process of it).
    var globalStep = 0
    /// What this epoch has counted so far.
    var tally = EpochTally()
    /// Stop (as if interrupted) after this many steps of this process; for tests.
    var stopAfterSteps: Int? = nil
    /// Steps taken by this process (since it started or resumed).
    var stepsThisProcess = 0
}
