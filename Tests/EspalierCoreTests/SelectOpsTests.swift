// The small ops the search space uses on parameter vectors: gather (merged ops' share of an
// edge's weights), segment softmax (PC-DARTS's β̃ per node) and an external scalar term (a plugin
// regularizer's value and gradient joining the graph), each against finite differences.

import EspalierCore
import EspalierTestSupport
import XCTest

final class SelectOpsTests: XCTestCase {
    func testGather_PicksEntriesAndScatterAddsGradients() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 3], acc, seed: 1, bound: 1)
        let g = Graph(accountant: acc)
        let y = try g.gather(g.constant(x), indices: [4, 0, 4])
        XCTAssertEqual(y.value.array, [x[4], x[0], x[4]])
        try GradCheck().check("gather", inputs: [x]) { g, v in try g.gather(v[0], indices: [4, 0, 4, 5]) }
        XCTAssertThrowsError(try g.gather(g.constant(x), indices: [6]))
    }

    func testSegmentSoftmax_SumsToOnePerSegment_AndMatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let x = try randomTensor([9], acc, seed: 2, bound: 2)
        let segments = [0..<2, 2..<5, 5..<9]
        let g = Graph(accountant: acc)
        let y = try g.segmentSoftmax(g.constant(x), segments: segments)
        for s in segments {
            XCTAssertEqual(s.reduce(Float(0)) { $0 + y.value[$1] }, 1, accuracy: 1e-6)
            let m = s.map { x[$0] }.max()!, z = s.reduce(Float(0)) { $0 + exp(x[$1] - m) }
            for i in s { XCTAssertEqual(y.value[i], exp(x[i] - m) / z, accuracy: 1e-6) }
        }
        try GradCheck().check("segmentSoftmax", inputs: [x]) { g, v in
            try g.weightedSum([try g.segmentSoftmax(v[0], segments: segments)], weights: try g.constant(Tensor.from([1.5], shape: [1], accountant: acc)))
        }
        XCTAssertThrowsError(try g.segmentSoftmax(g.constant(x), segments: [0..<4]), "segments must tile the vector")
    }

    func testExternalTerm_ValueAndGradientsFlowIntoItsInputs() throws {
        let acc = MemoryAccountant()
        let a = try randomTensor([2, 2], acc, seed: 3, bound: 1), b = try randomTensor([3], acc, seed: 4, bound: 1)
        // R = Σ a² + 3·Σ b computed outside; its gradient handed in.
        let ga = try Tensor.from(a.array.map { 2 * $0 }, shape: [2, 2], accountant: acc)
        let gb = try Tensor.from([3, 3, 3], shape: [3], accountant: acc)
        let value = a.array.reduce(0) { $0 + $1 * $1 } + 3 * b.array.reduce(0, +)
        let g = Graph(accountant: acc)
        let va = g.leaf(a), vb = g.leaf(b)
        let t = try g.externalTerm(value: value, inputs: [va, vb], grads: [ga, gb])
        XCTAssertEqual(t.value[0], value)
        try g.backward(try g.scale(t, by: 2))
        XCTAssertEqual(g.gradient(of: va)?.array, ga.array.map { 2 * $0 })
        XCTAssertEqual(g.gradient(of: vb)?.array, [6, 6, 6])
    }
}
