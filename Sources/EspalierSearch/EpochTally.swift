// What a search's current epoch has counted so far: its position in the epoch, the training
// loss and accuracy sums, the step times, the architecture loss, whether every step was skipped,
// and the network it trains with its predicted peak. Reset when an epoch starts; the first five
// are checkpointed with the run's position, so a resumed epoch reports what an unbroken one would.

struct EpochTally {
    var stepInEpoch = 0
    /// Σ loss·samples, correct predictions and samples of this epoch's weight steps.
    var lossSum = 0.0, correct = 0, seen = 0
    var stepTimes: [Double] = []
    /// The architecture loss of this epoch's architecture steps (SearchRun+Settings.swift).
    var archLossTotal = (sum: 0.0, count: 0)
    /// True while every step of this epoch was ES_STEP_SKIP (random search, ETENAS): the supernet
    /// was not trained, so the epoch-end evaluation of it is skipped (its log shows 0).
    var onlySkippedThisEpoch = true
    /// The network this epoch trains (its cells) and its predicted peak with the dataset, taken
    /// after epoch_begin (the memory timeline's row; SearchRun+Timeline.swift).
    var epochStart: (cells: Int, predicted: Int?)? = nil
}
