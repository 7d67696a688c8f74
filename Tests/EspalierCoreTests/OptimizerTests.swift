// Optimisers against hand-computed PyTorch updates, clipping and the cosine schedule.

import EspalierCore
import EspalierTestSupport
import XCTest

final class OptimizerTests: XCTestCase {
    let acc = MemoryAccountant()

    func makeParam(_ values: [Float], grad: [Float], decay: Bool = true) throws -> Parameter {
        let p = Parameter(name: "p", value: try Tensor.from(values, shape: [values.count], category: .parameters, accountant: acc), decay: decay)
        let g = try p.ensureGrad()
        for i in 0..<grad.count { g[i] = grad[i] }
        return p
    }

    func testSGD_MomentumAndWeightDecay_MatchPyTorch() throws {
        let p = try makeParam([1, -2], grad: [0.5, 0.25])
        let opt = try SGD(parameters: [p], learningRate: 0.1, momentum: 0.9, weightDecay: 0.01)
        opt.step()
        // d = g + wd·p = [0.51, 0.23]; buf = d; p -= 0.1·buf
        assertClose(p.value.array, [1 - 0.051, -2 - 0.023], tol: 1e-6)
        opt.step()   // same gradient: d2 = g + wd·p1; buf = 0.9·buf + d2
        let d2 = [0.5 + 0.01 * (1 - 0.051), 0.25 + 0.01 * (-2 - 0.023)]
        let buf = [0.9 * 0.51 + d2[0], 0.9 * 0.23 + d2[1]]
        assertClose(p.value.array, [Float(1 - 0.051 - 0.1 * buf[0]), Float(-2 - 0.023 - 0.1 * buf[1])], tol: 1e-6)
        XCTAssertEqual(acc.current[.optimizerState], 8, "one momentum buffer of 2 floats")
    }

    func testAdam_MatchesPyTorch() throws {
        let p = try makeParam([0.5], grad: [0.2])
        let opt = try Adam(parameters: [p], learningRate: 3e-4, beta1: 0.5, beta2: 0.999, weightDecay: 1e-3)
        opt.step()
        // Step 1: the bias-corrected update is lr · sign(d) (up to eps).
        XCTAssertEqual(p.value[0], 0.5 - 3e-4, accuracy: 1e-7)
        opt.step()
        let d1 = 0.2 + 1e-3 * 0.5, d2 = 0.2 + 1e-3 * (0.5 - 3e-4)
        let m = 0.5 * (0.5 * d1) + 0.5 * d2, v = 0.999 * (0.001 * d1 * d1) + 0.001 * d2 * d2
        let upd = 3e-4 * (m / 0.75) / ((v / (1 - 0.999 * 0.999)).squareRoot() + 1e-8)
        XCTAssertEqual(Double(p.value[0]), 0.5 - 3e-4 - upd, accuracy: 1e-7)
    }

    func testNoDecay_ParametersAreNotDecayed() throws {
        let p = try makeParam([1], grad: [0], decay: false)
        let opt = try SGD(parameters: [p], learningRate: 0.1, momentum: 0, weightDecay: 0.5)
        opt.step()
        XCTAssertEqual(p.value[0], 1)
    }

    func testClipGradNorm_ScalesToMaxNorm() throws {
        let p = try makeParam([0, 0], grad: [3, 4])
        let q = try makeParam([0], grad: [12])
        let norm = clipGradNorm([p, q], maxNorm: 6.5)
        XCTAssertEqual(norm, 13, accuracy: 1e-5)
        assertClose(p.grad!.array + q.grad!.array, [1.5, 2, 6], tol: 1e-5)
        XCTAssertEqual(clipGradNorm([p, q], maxNorm: 100), 6.5, accuracy: 1e-4)
        assertClose(p.grad!.array, [1.5, 2], tol: 1e-5, "no clipping below the limit")
    }

    func testCosineSchedule() {
        let s = CosineSchedule(maxLR: 0.025, minLR: 0.001, totalEpochs: 50)
        XCTAssertEqual(s.learningRate(epoch: 0), 0.025, accuracy: 1e-7)
        XCTAssertEqual(s.learningRate(epoch: 25), 0.013, accuracy: 1e-6)
        XCTAssertEqual(s.learningRate(epoch: 50), 0.001, accuracy: 1e-7)
    }

    func testOptimizerStateAllocated_BeforeAnyStep() throws {
        let acc = MemoryAccountant()
        let p = Parameter(name: "w", value: try Tensor.zeros([100], category: .parameters, accountant: acc))
        let opt = try Adam(parameters: [p], learningRate: 0.1)
        XCTAssertEqual(acc.current[.gradients], 400)
        XCTAssertEqual(acc.current[.optimizerState], 800)
        withExtendedLifetime(opt) {}
    }
}
