// The ranks a search runs on (one process: SingleProcess) and what its exchanges over them
// agreed and counted, with how its random services were last seeded; used by SearchRun+Ranks.swift.

import EspalierCore

/// For the trainer (`SearchRun`, `rankState`): its communicator, what its exchanges agreed
/// (interrupting) and counted, and how its random services were last seeded. Host thread only.
final class SearchRanks {
    /// The ranks this search runs on.
    let communicator: Communicator
    var interruptAgreed = false
    var exchangesThisStep = 0
    /// Floats summed over the ranks by this process's exchanges, and the steps it took (ranks.json).
    var floatsExchanged = 0, steps = 0
    /// The step the random services were last seeded for, and how many times (a caller that takes
    /// several steps without advancing `globalStep`, as some tests do, gets new draws each time).
    var seeded: (step: Int, count: Int) = (-1, 0)

    init(communicator: Communicator) { self.communicator = communicator }
}
