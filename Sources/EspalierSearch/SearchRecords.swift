// What a search writes and remembers beyond its position: the output folder (nil: nothing is
// written), the notes on its setup and on what its strategy pruned, each finished epoch's log
// line (also appended to OUT/log.jsonl), the TensorBoard event file, the largest epoch peak.

import EspalierCore

/// The trainer's (`SearchRun`'s) records, for its callers (tests read the notes, the pruning and
/// the logs) and for the files it writes (log.jsonl, tb/, ranks.json). Not checkpointed: they
/// cover this process (OUT/log.jsonl holds every epoch of the run).
struct SearchRecords {
    /// The run folder its files go to (passed on rank 0 only); nil: none.
    let outDirectory: String?
    /// What the run decided about its setup, in words (also written to standard error).
    var notes: [String] = []
    /// Without α (GSparsity): validation accuracy before and after the ops the strategy removed
    /// at its last epoch end (nil until an epoch end removes something).
    var pruning: (before: Double, after: Double, removed: Int)? = nil
    /// The log line of every epoch this process finished (each also appended to OUT/log.jsonl).
    var logs: [SearchEpochLog] = []
    /// The event file of OUT/tb, opened at the first epoch's end (SearchRun+TensorBoard.swift).
    var tensorBoard: TensorBoardWriter? = nil
    /// The largest epoch peak of this process (the accountant's, dataset included).
    var runPeakBytes = 0
}
