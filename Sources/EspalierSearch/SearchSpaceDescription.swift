// The DARTS cell search space, built from a description: stem, cells of `nodes` intermediate
// nodes whose edges each hold every candidate op (plugin ops, by id), reduction cells, global
// pooling and a classifier; architecture logits per cell type, turned into mixing weights by a
// plugin gate. Each candidate on each edge has a state (active, masked, removed) so that
// strategies can mask or remove ops; masked and removed ops never run and hold no activations.
// Without architecture parameters (GSparsity: `sumOps`) every edge is the plain sum of its
// running candidates (weight 1, the gate unused), and with `scaleParameterFree` each candidate
// without parameters (pools, skip_connect at stride 1) multiplies its output by a learnable
// scalar of its own (init 1; the trainer clamps it to [0, 1] after each step).
// Hyper-connected (Bonsai-Net's relaxed space, `hyperConnected`): every cell is distinct — its
// own α (edges, ops) and its own gate, a "slot" per cell instead of one per cell type — and cell i
// takes the previous cell's output (hard-wired, through pre1) plus a gated sum of every earlier
// output (stem, cells 0…i−2; cell 0 takes the stem twice, as in DARTS): each such input j has its
// own preprocessing (ReLU-conv1×1-BN; factorized reduce at half the resolution, a strided
// ReLU-conv1×1-BN beyond) to the cell's C channels at the previous cell's resolution, and its
// own logit in a per-cell (inputs, 1) tensor gated at ES_GATE_INPUTS granularity. Its memory is
// owned by `cellI/inputJ` (preprocessing) and `cellI/inputs` (the sum). A pruned or removed
// input runs nothing and allocates nothing; with every input pruned the cell's edges from that
// input are skipped. Reductions stay where they were put (the configured depth's positions), so
// a grown network keeps its cells. Auxiliary heads (`auxiliaryCells`, Bonsai's old classifiers):
// global pooling + linear after those cells; in training the loss adds auxiliaryWeight · CE of each.
// Concat aggregator (FiGS §3.3, `aggregator` .concat): a node is BN(conv1×1(concat_t w_t·y_t))
// over the running candidates t of its incoming edges instead of Σ_t w_t·y_t; the convolution's
// weight is kept as one block W_t per candidate (`cellI/nodeN/concat/edgeE.OP`), so masked and
// removed candidates cost nothing, and its activations are owned by `cellI/nodeN/concat`.
// Shapes: input (N, Cin, H, W) → logits (N, classes). α: (edges, ops) per slot.
// The built network is `Supernet` (Supernet.swift), its cells `SearchCell` (SearchCell.swift).

import EspalierCore
import EspalierHost
import Foundation

/// What the search space is made of (saved with every run).
public struct SearchSpaceDescription: Codable, Equatable, Sendable {
    public var inputChannels = 1
    public var classes = 10
    /// C: channels of the first cells (doubled at each reduction).
    public var channels = 16
    /// Number of cells (layers).
    public var cells = 8
    /// Intermediate nodes per cell.
    public var nodes = 4
    /// Cell output = concat of the last `multiplier` nodes.
    public var multiplier = 4
    public var stemMultiplier = 3
    /// Candidate ops, by component id, in α's column order.
    public var ops: [String] = SearchSpaceDescription.dartsOps
    /// Which cells reduce; nil = at cells/3 and 2·cells/3.
    public var reductionCells: [Int]? = nil
    /// PC-DARTS partial channels K: each edge's ops see C/K channels, the rest bypass (1 = all).
    public var partialChannels = 1
    /// PC-DARTS edge normalisation: β per edge, softmax over each node's incoming edges.
    public var edgeNormalization = false
    /// Ops that stand for several candidates at once (MergeNAS): ids of ops with `build_mixed`
    /// whose `covers` parameter names the candidates they replace on every edge.
    public var mergedOps: [String] = []
    /// No architecture parameters (GSparsity): every edge sums its running candidates with weight
    /// 1; the gate is not used and α is not trained. Set for strategies with ES_REQUIRES_NO_ARCH_PARAMS.
    public var sumOps = false
    /// GSparsity: every candidate without parameters gets a learnable output scale (init 1,
    /// clamped to [0, 1]), part of its weight group; a strategy's `scale_parameter_free` parameter.
    public var scaleParameterFree = false
    /// Bonsai-Net's relaxed space: distinct cells (α per cell), each taking the previous cell plus
    /// a gated sum of all earlier outputs. A strategy's `hyper_connected` parameter, or --hyper-connected.
    public var hyperConnected = false
    /// Cells followed by an auxiliary classifier (global pooling + linear); Bonsai-Net's old classifiers.
    public var auxiliaryCells: [Int] = []
    /// Weight w of each auxiliary head's loss: loss = CE(main) + w·Σ CE(aux) (training only).
    public var auxiliaryWeight = 0.4
    /// How a node combines its candidates: their (weighted) sum, or FiGS's concat aggregator,
    /// node = BN(conv1×1(concat of w_t·y_t)) back to C channels. `--aggregator`, or a strategy's
    /// `aggregator` parameter (FiGS's).
    public var aggregator: NodeAggregator = .sum
    /// Build the candidate ops as the evaluation network has them (`affine` in their config: batch
    /// norm with γ/β, no batch norm after pools) instead of DARTS's search ops (BN without γ/β).
    /// GSparsity's `affine_ops`: a conv followed by BN without γ/β computes the same function at any
    /// scale of its weights, so their gradient has no component along them (⟨∂L/∂W, W⟩ = 0) and
    /// nothing resists the group penalty's shrinking; γ gives the group a scale the loss depends on.
    public var affineOps = false

    public static let dartsOps = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                  "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"].map { "espalier.op.\($0)/1" }

    public init() {}

    /// Which cells reduce. Hyper-connected: positions past the current depth are left out (a
    /// growing network keeps its reductions where the full depth has them).
    public var reductions: [Int] {
        let r = reductionCells ?? [cells / 3, 2 * (cells / 3) + 2 * (cells % 3) / 3]  // ⌊2·cells/3⌋ without overflow
        return hyperConnected ? r.filter { $0 < cells } : r
    }

    /// Hyper-connected: the earlier outputs cell i sums (stem = −1, then cells 0…i−2; cell 0: the stem).
    public func hyperSources(cell i: Int) -> [Int] { i == 0 ? [-1] : Array(-1...(i - 2)) }

    /// Slots of architecture logits: one per cell when hyper-connected, else normal and reduce.
    public var slotCount: Int { hyperConnected ? cells : 2 }
    public var edgesPerCell: Int { (0..<nodes).reduce(0) { $0 + 2 + $1 } }

    /// Candidate ops by short name (`sep_conv_3x3`), as genotypes name them.
    public var opNames: [String] { ops.map(Component.shortName) }

    /// The most channels (C) and cells this host builds.
    public static let channelLimit = 65536, cellLimit = 1024

    public func validate() throws {
        guard channels >= 2 else { throw EspalierError.config("--channels must be at least 2 (got \(channels)): reduction cells halve the channels on their factorized skip path") }
        guard channels <= Self.channelLimit else { throw EspalierError.config("--channels \(channels) is past the \(Self.channelLimit) this host builds") }
        guard cells >= 1, cells <= Self.cellLimit else { throw EspalierError.config("--cells must be between 1 and \(Self.cellLimit) (got \(cells))") }
        guard nodes >= 1, nodes <= 64 else { throw EspalierError.config("--nodes must be between 1 and 64 (got \(nodes))") }
        guard multiplier >= 1, multiplier <= nodes else { throw EspalierError.config("search space: the cell's output concatenates \(multiplier) nodes; it must be between 1 and --nodes \(nodes)") }
        guard stemMultiplier >= 1 else { throw EspalierError.config("search space: the stem multiplier must be at least 1 (got \(stemMultiplier))") }
        guard !ops.isEmpty else { throw EspalierError.config("search space: no candidate ops; give at least one --op (default: the 8 DARTS ops)") }
        guard Set(opNames).count == ops.count else { throw EspalierError.config("search space: two candidate ops share a short name: \(opNames)") }
        guard reductions.allSatisfy({ $0 >= 0 && $0 < cells }) else { throw EspalierError.config("search space: reduction cells \(reductions) outside 0..<\(cells)") }
        guard partialChannels >= 1, channels % partialChannels == 0 else {
            throw EspalierError.config("search space: partial channels K=\(partialChannels) must be ≥ 1 and divide C=\(channels); try K=\((1...8).filter { channels % $0 == 0 }.last ?? 1)")
        }
        if hyperConnected {
            guard partialChannels == 1, !edgeNormalization, mergedOps.isEmpty else {
                throw EspalierError.config("search space: the hyper-connected space (Bonsai-Net) has every op on every edge and every input gated; "
                                           + "it does not combine with partial channels, edge normalisation or merged ops (got K=\(partialChannels), edge normalisation \(edgeNormalization), merged \(mergedOps))")
            }
        }
        if aggregator == .concat {
            guard partialChannels == 1, !edgeNormalization, mergedOps.isEmpty, !hyperConnected else {
                throw EspalierError.config("search space: the concat aggregator (FiGS) joins every running candidate of a node into one 1×1 convolution; "
                                           + "it does not combine with partial channels, edge normalisation, merged ops or the hyper-connected space "
                                           + "(got K=\(partialChannels), edge normalisation \(edgeNormalization), merged \(mergedOps), hyper-connected \(hyperConnected)); "
                                           + "drop those options or use --aggregator sum")
            }
        }
        guard auxiliaryWeight.isFinite, auxiliaryWeight >= 0, auxiliaryCells.allSatisfy({ $0 >= 0 && $0 < cells - 1 }) else {
            throw EspalierError.config("search space: auxiliary heads \(auxiliaryCells) must sit after cells 0..<\(cells - 1) (the last cell has the classifier), with a weight ≥ 0 (got \(auxiliaryWeight))")
        }
    }
}

extension SearchSpaceDescription {
    enum CodingKeys: String, CodingKey {
        case inputChannels, classes, channels, cells, nodes, multiplier, stemMultiplier, ops, reductionCells, partialChannels, edgeNormalization,
             mergedOps, sumOps, scaleParameterFree, hyperConnected, auxiliaryCells, auxiliaryWeight, aggregator, affineOps
    }

    /// Every field optional (the default where missing), so a config.json written before a field
    /// existed still loads (e.g. a run resumed across versions).
    public init(from decoder: Decoder) throws {
        self.init()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func read<T: Decodable>(_ key: CodingKeys, _ value: inout T) throws { if let v = try c.decodeIfPresent(T.self, forKey: key) { value = v } }
        try read(.inputChannels, &inputChannels); try read(.classes, &classes); try read(.channels, &channels); try read(.cells, &cells)
        try read(.nodes, &nodes); try read(.multiplier, &multiplier); try read(.stemMultiplier, &stemMultiplier); try read(.ops, &ops)
        reductionCells = try c.decodeIfPresent([Int].self, forKey: .reductionCells)
        try read(.partialChannels, &partialChannels); try read(.edgeNormalization, &edgeNormalization); try read(.mergedOps, &mergedOps)
        try read(.sumOps, &sumOps); try read(.scaleParameterFree, &scaleParameterFree); try read(.hyperConnected, &hyperConnected)
        try read(.auxiliaryCells, &auxiliaryCells); try read(.auxiliaryWeight, &auxiliaryWeight)
        try read(.aggregator, &aggregator); try read(.affineOps, &affineOps)
    }
}
