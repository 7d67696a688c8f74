// The data a search trains and scores on: its training set split 50/50 into a weight half and an
// architecture half, each behind its own loader, and the view of the architecture half that the
// epoch's evaluation scores (the first --eval-images of it, or all of it). Built once by
// `SearchRun.init`; the loaders' positions are checkpointed (SearchRun+Checkpoint.swift).

import EspalierCore

/// The two halves of a search's training split and the validation view its evaluation uses; the
/// trainer (`SearchRun`) draws its steps' batches from the loaders and scores each epoch on the view.
struct SearchData {
    /// The weight-training half (weight steps; shuffled, whole batches only; sharded over the ranks).
    let trainLoader: DataLoader
    /// The architecture half (α steps; cycled, so that it never runs dry before the training half).
    let validLoader: DataLoader
    /// What each epoch's evaluation scores: the architecture half, or its first --eval-images.
    let validEvalView: DataView
}
