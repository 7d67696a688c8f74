// Helpers the search test files share: the tiny supernet most of them search (small enough for
// finite differences and second-long runs) and Fashion-MNIST's training set, or a skip.

import EspalierCore
import EspalierSearch
import XCTest

/// C = 4, a normal and a reduction cell of 2 nodes, batch 4, seed 5; DARTS's 8 ops unless `ops`.
func tinySearchConfig(strategy: String = "espalier.strategy.darts/1", settings: [String: String] = [:],
                      ops: [String] = SearchSpaceDescription.dartsOps, epochs: Int = 1) -> SearchConfig {
    var c = SearchConfig()
    c.space.channels = 4
    c.space.cells = 2
    c.space.nodes = 2
    c.space.multiplier = 2
    c.space.stemMultiplier = 1
    c.space.reductionCells = [1]
    c.space.ops = ops
    c.strategy = strategy
    c.strategySettings = settings
    c.batchSize = 4
    c.epochs = epochs
    c.seed = 5
    return c
}

/// Fashion-MNIST's training set, or XCTSkip when the Debian package is not installed.
func fashionMNISTTrainOrSkip(_ acc: MemoryAccountant) throws -> Dataset {
    do { return try Dataset.fashionMNIST(split: .train, accountant: acc) } catch {
        throw XCTSkip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): \(error)")
    }
}
