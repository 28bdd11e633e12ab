// The one list of update rules. Everything that enumerates the rules is
// generated from it: the RuleId enumerators and the KernelTable rows
// (kernel_types.hpp, kernels.cpp), the explicit instantiations of the generic
// step (step.cpp) and the Python objects _core.<name> (bindings.cpp).
//
// X(Type, name, summary):
//   Type     the rule's traits TypeRule (rules.hpp) and per-step scalars
//            TypeScalars (kernel_types.hpp); its id is kType;
//   name     the kernel template name<T> in kernels.cpp, which is also the
//            rule's Python name (_core.name, e.g. _core.adam.step);
//   summary  a one-line docstring for the Python object.
//
// Adding a rule: its loop in kernels.cpp, its Scalars struct, its traits in
// rules.hpp/rules.cpp, a line here; then its class in optimizers.py, its
// reference in reference.py, its entry in tests/cases.py and its formula in
// docs/algorithms.md (docs/architecture.md says more).
//
// Plain preprocessor text only: this file is included by every SIMD
// target's copy of the kernels as well as by the ISA-agnostic driver.
#pragma once

#define FUSEDOPT_FOR_EACH_RULE(X)                                                   \
  X(Momentum, momentum, "Heavy-ball momentum (the course's form).")                 \
  X(Sgd, sgd, "SGD as torch.optim.SGD.")                                            \
  X(Adadelta, adadelta, "Adadelta (Zeiler's, or the course's variant).")           \
  X(Adam, adam, "Adam / AdamW / AMSGrad as torch.optim.Adam.")                      \
  X(Rmsprop, rmsprop, "RMSprop as torch.optim.RMSprop.")                            \
  X(Adagrad, adagrad, "Adagrad as torch.optim.Adagrad.")                            \
  X(Nadam, nadam, "NAdam as torch.optim.NAdam.")                                    \
  X(Radam, radam, "RAdam as torch.optim.RAdam.")                                    \
  X(Adamax, adamax, "Adamax as torch.optim.Adamax.")                                \
  X(Lion, lion, "Lion (Chen et al. 2023).")
