// espalier.strategy.pcdarts/1: PC-DARTS (Xu et al., ICLR 2020). Memory-efficient DARTS by partial
// channel connections: on every edge only C/K channels go through the candidate ops, the rest
// bypass them (a 2×2 max-pool on reduction edges), then the halves are concatenated and the
// channels shuffled (groups K); edge normalisation β (softmax over each node's incoming edges)
// steadies the edge choice, and the genotype ranks edges by op weight × β̃.
//
// The partial channels and β live in the host's supernet: the strategy's parameters
// `partial_channels` and `edge_normalization` are the space options of that name (the host copies
// them into the space before it builds the supernet, so the memory prediction already sees C/K).
// Each step is DARTS's bilevel first-order step; the first `warmup_epochs` train the weights only
// (the paper warms up for 15 of 50 epochs). At the first epoch the strategy checks through the
// search services that the host built the space it asked for.

import EspalierPluginKit

final class PCDartsStrategy: StrategyComponent {
    static let id = "espalier.strategy.pcdarts/1"

    let host: PluginHost
    let partialChannels: Int
    let edgeNormalization: Bool
    let warmupEpochs: Int

    init(host: PluginHost, params: ParamValues) throws {
        self.host = host
        partialChannels = try params.int("partial_channels")
        edgeNormalization = try params.bool("edge_normalization")
        warmupEpochs = try params.int("warmup_epochs")
        guard partialChannels >= 1 else {
            throw PluginError.invalidArgument("\(Self.id): partial_channels must be >= 1 (got \(partialChannels)); the paper uses 4")
        }
        guard warmupEpochs >= 0 else { throw PluginError.invalidArgument("\(Self.id): warmup_epochs must be >= 0 (got \(warmupEpochs))") }
    }

    func epochBegin(state: RunState) throws {
        guard let search = host.search else { return }
        let k = Int(try search.value("space.partial_channels"))
        let norm = try search.value("space.edge_normalization") != 0
        guard k == partialChannels, norm == edgeNormalization else {
            throw PluginError.invalidArgument(
                "\(Self.id): asked for partial_channels \(partialChannels), edge_normalization \(edgeNormalization) but the host's supernet has \(k), \(norm)")
        }
    }

    func planStep(state: RunState) throws -> StepPlan {
        state.epoch < warmupEpochs ? StepPlan(.weightsOnly) : StepPlan(.bilevel)
    }
}
