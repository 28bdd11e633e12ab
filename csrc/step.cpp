#include "step.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "dispatch.hpp"
#include "parallel.hpp"
#include "quantize.hpp"
#include "rules.hpp"

namespace fusedopt {
namespace {

// The step count of a state entry. Bounded so that t = step + 1 and every
// count the scalars compute with (as doubles) stay exact.
std::int64_t read_step(py::handle entry, std::int64_t index) {
  PyObject* value = dict_item(entry, "step");
  const auto label = [index] { return "state[" + std::to_string(index) + "]['step']"; };
  if (value == nullptr) throw py::value_error(label() + " is missing");
  if (PyBool_Check(value) || !PyLong_Check(value))
    throw py::type_error(label() + " must be an int, got " + type_name(value));
  int overflow = 0;
  const long long step = PyLong_AsLongLongAndOverflow(value, &overflow);
  if (step == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (overflow != 0 || step < 0 || step >= kMaxStep)
    throw py::value_error(label() + " must be an int in [0, 2**53 - 1), got " + py::repr(value).cast<std::string>());
  return step;
}

// A scalar state value such as state[3]['mu_product']: a finite real number,
// or the key's initial value when it is missing (a rule turned on mid-run).
double read_scalar_state(py::handle entry, std::int64_t index, const StateKey& key) {
  PyObject* value = dict_item(entry, key.name);
  if (value == nullptr || value == Py_None) return key.initial;
  return finite_number(py::reinterpret_borrow<py::object>(value),
                       [&] { return "state[" + std::to_string(index) + "]['" + key.name + "']"; });
}

// splitmix64's finaliser: the per-tensor key of stochastic rounding's random
// bits. fusedopt/reference.py computes the same.
std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Where the random bits of one tensor's stochastic rounding come from: the
// seed, the step count and the param's position in the optimizer, never
// the thread or the split (the element index is mixed in per element).
std::uint64_t random_key(std::uint64_t seed, std::int64_t t, std::int64_t position) {
  return mix64(seed ^ mix64(static_cast<std::uint64_t>(t) ^ mix64(static_cast<std::uint64_t>(position))));
}

// One param's share of a step, from collect() to record(). It holds strong
// references to everything it reads or will write, so nothing another
// thread or a hyperparameter's own code does while the step runs can free
// an object under it. (py::object, not py::array: a default py::array is a
// new empty ndarray.)
template <class Rule>
struct ParamStep {
  std::int64_t index;  // in grads and state
  std::size_t group;
  std::int64_t random_position;  // the position stochastic rounding's bits are keyed by
  std::ptrdiff_t grad_range = -1;  // the grad's range in the collection's overlap check
  py::object entry;    // state[index]
  py::object param, grad;
  Dtype dtype;
  py::object state_arrays[kMaxStateArrays];
  py::object absmax[kMaxStateArrays];  // 8-bit state: the scales of state_arrays[k], the uint8 codes
  bool created[kMaxStateArrays] = {};  // made by this step: recorded into entry
  py::object master, compensation;     // master_param / kahan_comp, when the group keeps them
  bool master_created = false, compensation_created = false;
  StateKeys keys;
  std::int64_t t;  // the step count after this step
  double scalar_state[kMaxStateScalars] = {};
  typename Rule::Scalars scalars;
  StagedScalars staged{};  // used when any stream is not stored in the compute type
  bool is_staged = false;
  Task task{};
};

// What a group's 8-bit settings are, for errors about state made with others.
std::string quant_settings(const StorageOptions& storage, std::size_t group) {
  return "param group " + std::to_string(group) + " has state_bits=" + std::to_string(storage.state_bits) +
         ", block_size=" + std::to_string(storage.block_size) + ", min_8bit_size=" +
         std::to_string(storage.min_8bit_size);
}

// An existing state array of a param that keeps unquantized state must not be 8-bit codes.
void refuse_codes(const py::array& buffer, const ArrayLabel& label, const StorageOptions& storage, std::size_t group) {
  if (buffer.dtype().kind() == 'u' && buffer.itemsize() == 1)
    throw py::value_error(label.text() + " holds 8-bit codes, but " + quant_settings(storage, group) +
                          ": this param keeps unquantized state (changing state_bits or min_8bit_size mid-run is "
                          "not supported; load a state_dict made with these settings)");
}

// Stream 2 + k of an 8-bit param: the state array's uint8 codes (made at its
// initial value if missing) and its per-block absmax, checked; the staged
// kernel decodes and re-encodes them.
template <class Step>
void collect_quantized(Step& p, int k, PyObject* existing, const py::array& param, const ArrayLabel& param_label,
                       const StorageOptions& storage, std::size_t group, Stream& stream, OverlapCheck& overlaps) {
  const StateKey& key = p.keys.arrays[k];
  const bool is_signed = key.sign == StateSign::kSigned;
  const ArrayLabel label{"state", p.index, key.name}, absmax_label{"state", p.index, absmax_key(key.name)};
  const std::string settings = quant_settings(storage, group);
  py::array codes, absmax;
  if (p.created[k]) {
    QuantizedArrays made = quantized_filled(param, storage.block_size, is_signed, key.initial);
    codes = std::move(made.codes);
    absmax = std::move(made.absmax);
  }
  if (!p.created[k]) codes = as_array(existing, label);
  void* code_data = check_codes_like_param(codes, param, label, param_label, settings);
  if (!p.created[k]) {
    PyObject* scales = dict_item(p.entry, absmax_label.key);
    if (scales == nullptr || scales == Py_None)
      throw py::value_error(absmax_label.text() + " is missing: the scales of 8-bit " + label.text() + " (" +
                            settings + ")");
    absmax = as_array(scales, absmax_label);
  }
  const std::int64_t size = param.size();
  float* absmax_data = check_absmax(absmax, storage.block_count(size), absmax_label,
                                    settings + "; changing block_size mid-run is not supported");
  if (!p.created[k]) {
    overlaps.add(code_data, size, label, true);
    overlaps.add(absmax_data, absmax.size() * std::int64_t(sizeof(float)), absmax_label, true);
  }
  stream = Stream{code_data, kFloat32, size};  // dtype unused: quant_maps marks the stream as codes
  p.staged.quant_maps[2 + k] = &quant_map(is_signed);
  p.staged.absmax[2 + k] = absmax_data;
  p.state_arrays[k] = std::move(codes);
  p.absmax[k] = std::move(absmax);
}

// Reads one group's hyperparameters: the rule's, and the storage options.
template <class Rule>
struct GroupSetting {
  typename Rule::Hyper hyper;
  StateKeys keys;
  StorageOptions storage;
};

// Everything a step read and checked. It holds the snapshots of the lists
// it read, so that a later step can tell, by identity, that it is given the
// same objects (none can have been freed and its address reused).
template <class Rule>
struct Collection : StepCache::Entry {
  const KernelTable* table = nullptr;
  std::vector<py::tuple> group_params;
  py::tuple grads, state;
  std::vector<GroupSetting<Rule>> settings;
  std::vector<ParamStep<Rule>> steps;
  OverlapCheck overlaps;  // every array's range; unsorted when kept for a cache (a new grad replaces its own)
  bool keep_ranges = false;
  bool grad_scale_active = false;
  bool created_any = false;  // state made by this step: a later step would not make it again
  std::vector<Task> tasks;          // run()'s, here so that their capacity is reused
  std::vector<FiniteCheck> checks;  // the grad check of each task

  // Empty again, holding no Python object, every vector keeping its capacity.
  void clear() {
    table = nullptr;
    group_params.clear();
    grads.release().dec_ref();
    state.release().dec_ref();
    settings.clear();
    steps.clear();
    overlaps.clear();
    keep_ranges = grad_scale_active = created_any = false;
    tasks.clear();
    checks.clear();
  }
};

// The Collections of plain steps, reused: one free list per rule, taken and
// given back with the GIL held (never while a kernel runs without it).
// Their vectors keep their capacity, so a step like the last one allocates
// nothing (allocations were a tenth of a small step's instructions). A step
// nested in another one, or beside it in another thread, takes a second
// Collection. A returned Collection holds no Python object, so the free list
// may outlive the interpreter.
template <class Rule>
class PooledCollection {
 public:
  PooledCollection() {
    if (free_list().empty()) {
      collection_ = std::make_unique<Collection<Rule>>();
    } else {
      collection_ = std::move(free_list().back());
      free_list().pop_back();
    }
  }
  ~PooledCollection() {
    collection_->clear();
    if (free_list().size() < kMaxFree) free_list().push_back(std::move(collection_));
  }
  PooledCollection(const PooledCollection&) = delete;
  PooledCollection& operator=(const PooledCollection&) = delete;
  Collection<Rule>& operator*() { return *collection_; }

 private:
  static constexpr std::size_t kMaxFree = 4;
  static std::vector<std::unique_ptr<Collection<Rule>>>& free_list() {
    static std::vector<std::unique_ptr<Collection<Rule>>> list;
    return list;
  }
  std::unique_ptr<Collection<Rule>> collection_;
};

// The values of one param's step that change from step to step: the step
// count, the scalar state, the rule's scalars, and what the staged kernel
// keys on them.
template <class Rule>
void set_step_values(ParamStep<Rule>& p, const GroupSetting<Rule>& setting, const GradScale& grad_scale,
                     bool buffer_is_new) {
  p.t = read_step(p.entry, p.index) + 1;
  for (int k = 0; k < p.keys.scalar_count; ++k)
    p.scalar_state[k] = read_scalar_state(p.entry, p.index, p.keys.scalars[k]);
  p.scalars = Rule::scalars(setting.hyper, {p.t, buffer_is_new, p.scalar_state});
  if (p.is_staged) {
    p.staged.scale_grad = grad_scale.active;
    p.staged.grad_scale = grad_scale.value;
    p.staged.random_key = random_key(setting.storage.seed, p.t, p.random_position);
  }
}

// Phase 1 of a step: read and check everything, writing nothing. The
// hyperparameters are read first, because reading a number may run its
// owner's Python code; every array is read after that, from snapshots.
template <class Rule>
void collect(Collection<Rule>& c, py::handle param_groups_in, py::handle grads_in, py::handle state_in,
             const GradScale& grad_scale) {
  const KernelTable& table = active_kernels();
  c.table = &table;
  c.grad_scale_active = grad_scale.active;
  const py::tuple param_groups = snapshot(param_groups_in, "param_groups");

  std::vector<py::tuple>& group_params = c.group_params;
  py::ssize_t param_count = 0;
  for (py::handle group : param_groups) {
    if (!PyDict_Check(group.ptr())) throw py::type_error("param_groups must hold dicts");
    PyObject* params = dict_item(group, "params");
    if (params == nullptr) throw py::value_error("a param group has no 'params'");
    group_params.push_back(snapshot(params, "a param group's 'params'"));
    param_count += static_cast<py::ssize_t>(group_params.back().size());
  }
  // Lengths first: a grads list of the wrong length is the commonest mistake.
  c.grads = snapshot(grads_in, "grads");
  c.state = snapshot(state_in, "state");
  const py::tuple &grads = c.grads, &state = c.state;
  if (static_cast<py::ssize_t>(grads.size()) != param_count)
    throw py::value_error("grads has " + std::to_string(grads.size()) + " entries but the optimizer has " +
                          std::to_string(param_count) + " params");
  if (static_cast<py::ssize_t>(state.size()) != param_count)
    throw py::value_error("state has " + std::to_string(state.size()) + " entries but the optimizer has " +
                          std::to_string(param_count) + " params");

  std::vector<GroupSetting<Rule>>& settings = c.settings;
  for (std::size_t g = 0; g < param_groups.size(); ++g) {
    const GroupReader reader(param_groups[g], static_cast<std::int64_t>(g));
    const auto hyper = Rule::read(reader);
    settings.push_back({hyper, state_keys_of<Rule>(hyper), read_storage_options(reader)});
    settings.back().storage.template check_keys<Rule>();
  }

  std::vector<ParamStep<Rule>>& steps = c.steps;
  steps.reserve(static_cast<std::size_t>(param_count));
  OverlapCheck& overlaps = c.overlaps;
  overlaps.reserve(static_cast<std::size_t>(param_count) * (2 + kMaxStateArrays));
  std::int64_t index = 0;
  for (std::size_t g = 0; g < param_groups.size(); ++g) {
    const StateKeys& keys = settings[g].keys;
    const StorageOptions& storage = settings[g].storage;
    if (!storage.random_index.empty() && storage.random_index.size() != group_params[g].size())
      throw py::value_error("param group " + std::to_string(g) + " has " + std::to_string(group_params[g].size()) +
                            " params but " + std::to_string(storage.random_index.size()) + " _random_index pairs");
    std::size_t in_group = 0;
    for (py::handle param_object : group_params[g]) {
      const std::int64_t i = index++;
      const StorageOptions::RandomIndex random_index =
          storage.random_index.empty() ? StorageOptions::RandomIndex{i, 0, 0} : storage.random_index[in_group];
      ++in_group;
      py::handle grad_object = grads[static_cast<std::size_t>(i)];
      if (grad_object.is_none()) continue;  // like torch: a param without a gradient is left alone

      ParamStep<Rule>& p = steps.emplace_back();
      p.index = i;
      p.group = g;
      p.random_position = random_index.position;
      p.keys = keys;
      const ArrayLabel param_label{"params", i}, grad_label{"grads", i};
      py::array param = as_array(param_object, param_label);
      const Stream w = check_param(param, param_label);
      p.dtype = w.dtype;
      storage.check_param(w.dtype, g);
      py::array grad = as_array(grad_object, grad_label);
      const Stream gs = check_like_param(grad, param, w.dtype, grad_label, param_label, false, DtypeRule::kSameAsParam);
      overlaps.add(w, param_label, true);
      p.grad_range = overlaps.add(gs, grad_label, false);

      p.entry = state[static_cast<std::size_t>(i)];
      if (!PyDict_Check(p.entry.ptr()))
        throw py::type_error("state[" + std::to_string(i) + "] must be a dict, got " + type_name(p.entry));

      Stream streams[kMaxStreams] = {w, gs};
      bool buffer_is_new = false;
      const bool quantized = storage.quantizes(random_index.deciding(w.size));
      for (int k = 0; k < keys.array_count; ++k) {
        const StateKey& key = keys.arrays[k];
        const ArrayLabel label{"state", i, key.name};
        PyObject* existing = dict_item(p.entry, key.name);
        // Missing when a setting turned it on after construction (momentum
        // from 0, amsgrad, scale): it starts at its initial value, like a
        // buffer made at construction, in the group's state dtype.
        p.created[k] = existing == nullptr || existing == Py_None;
        buffer_is_new = buffer_is_new || p.created[k];
        if (quantized) {
          collect_quantized(p, k, existing, param, param_label, storage, g, streams[2 + k], overlaps);
          continue;
        }
        py::array buffer = p.created[k] ? filled_like(param, storage.state_dtype(key.name, w.dtype), key.initial)
                                        : as_array(existing, label);
        if (!p.created[k]) refuse_codes(buffer, label, storage, g);
        streams[2 + k] = check_like_param(buffer, param, w.dtype, label, param_label, true, DtypeRule::kSameCompute);
        if (!p.created[k]) overlaps.add(streams[2 + k], label, true);
        p.state_arrays[k] = std::move(buffer);
      }
      // Master weights: the kernel updates the float32 master, the param is its rounded copy.
      if (storage.master_weights) {
        const ArrayLabel label{"state", i, "master_param"};
        PyObject* existing = dict_item(p.entry, "master_param");
        p.master_created = existing == nullptr || existing == Py_None;
        py::array master = p.master_created ? float32_copy(param, w.dtype) : as_array(existing, label);
        const Stream m = check_like_param(master, param, w.dtype, label, param_label, true, DtypeRule::kFloat32);
        if (!p.master_created) overlaps.add(m, label, true);
        p.staged.param_copy = w.data;
        p.staged.param_copy_dtype = w.dtype;
        streams[0] = m;
        p.master = std::move(master);
      }
      if (storage.kahan_sum) {
        const ArrayLabel label{"state", i, "kahan_comp"};
        PyObject* existing = dict_item(p.entry, "kahan_comp");
        p.compensation_created = existing == nullptr || existing == Py_None;
        py::array compensation = p.compensation_created ? filled_like(param, w.dtype, 0.0) : as_array(existing, label);
        const Stream c = check_like_param(compensation, param, w.dtype, label, param_label, true,
                                          DtypeRule::kSameAsParam);
        if (!p.compensation_created) overlaps.add(c, label, true);
        p.staged.kahan_compensation = c.data;
        p.compensation = std::move(compensation);
      }
      c.created_any = c.created_any || buffer_is_new || p.master_created || p.compensation_created;

      // The kernel streams: straight to the arrays when all are stored in the
      // compute type, else through the staged kernel.
      const Compute compute = compute_of(w.dtype);
      const int stream_count = 2 + keys.array_count;
      std::int64_t bytes_per_element = 0;  // reads and writes
      p.is_staged = grad_scale.active || storage.master_weights || quantized;
      for (int k = 0; k < stream_count; ++k) {
        const bool codes = p.staged.quant_maps[k] != nullptr;  // 1 byte; its absmax, 8 / block_size, is not counted
        p.is_staged = p.is_staged || streams[k].dtype != dtype_of(compute);
        bytes_per_element += (codes ? 1 : itemsize(streams[k].dtype)) * (k == 1 ? 1 : 2);
      }
      if (storage.master_weights) bytes_per_element += itemsize(w.dtype);       // the param, written
      if (storage.kahan_sum) bytes_per_element += 2 * itemsize(w.dtype);        // the compensation
      p.task = Task{table.kernels[Rule::id][compute], nullptr, {}, w.size, bytes_per_element,
                    quantized ? storage.block_size : 1};
      for (int k = 0; k < stream_count; ++k) p.task.streams[k] = streams[k].data;
      if (p.is_staged) {
        StagedScalars& s = p.staged;
        s.rule = Rule::id;
        s.kernel = p.task.kernel;
        s.stream_count = stream_count;
        for (int k = 0; k < stream_count; ++k) s.dtypes[k] = streams[k].dtype;
        s.param_store = storage.kahan_sum ? ParamStore::kKahan
                        : storage.stochastic ? ParamStore::kStochastic : ParamStore::kNearest;
        s.random_offset = random_index.offset;
        s.block_size = storage.block_size;
        p.task.kernel = table.staged[compute];
      }
      set_step_values(p, settings[g], grad_scale, buffer_is_new);
      p.param = std::move(param);
      p.grad = std::move(grad);
    }
  }
  if (c.keep_ranges) {
    OverlapCheck(overlaps).check();  // a copy: check() sorts
  } else {
    overlaps.check();
  }
}

// New gradient arrays for the params a collection steps (a training loop's
// zero_grad() and backward make new ones at every step): each checked as
// collect() checks a grad, then every range for overlaps again. False when a
// param gains or loses its gradient (other steps). Raises collect()'s errors;
// the caller then drops `c`, which may hold some of the new grads.
template <class Rule>
bool take_new_grads(Collection<Rule>& c, py::handle grads_in) {
  const py::tuple grads = snapshot(grads_in, "grads");
  if (grads.size() != c.grads.size()) return false;
  std::size_t stepped = 0;  // c.steps[stepped] is the next param with a grad
  for (std::size_t i = 0; i < grads.size(); ++i) {
    const bool has_grad = stepped < c.steps.size() && c.steps[stepped].index == static_cast<std::int64_t>(i);
    if (grads[i].is_none() == has_grad) return false;
    stepped += has_grad;
  }
  OverlapCheck overlaps = c.overlaps;
  for (ParamStep<Rule>& p : c.steps) {
    py::handle object = grads[static_cast<std::size_t>(p.index)];
    if (object.ptr() == p.grad.ptr()) continue;
    const ArrayLabel param_label{"params", p.index}, grad_label{"grads", p.index};
    py::array grad = as_array(object, grad_label);
    const Stream gs = check_like_param(grad, py::reinterpret_borrow<py::array>(p.param), p.dtype, grad_label,
                                       param_label, false, DtypeRule::kSameAsParam);
    overlaps.replace(p.grad_range, gs, grad_label, false);
    p.task.streams[1] = gs.data;
    p.grad = std::move(grad);
  }
  OverlapCheck(overlaps).check();
  c.overlaps = std::move(overlaps);
  c.grads = grads;
  return true;
}

// Whether a list or tuple holds exactly the objects of `held`, in order.
bool same_items(py::handle sequence, const py::tuple& held) {
  PyObject* const object = sequence.ptr();
  const bool is_list = PyList_Check(object);
  if (!is_list && !PyTuple_Check(object)) return false;
  const Py_ssize_t n = Py_SIZE(object);
  if (n != static_cast<Py_ssize_t>(held.size())) return false;
  for (Py_ssize_t i = 0; i < n; ++i)
    if ((is_list ? PyList_GET_ITEM(object, i) : PyTuple_GET_ITEM(object, i)) != PyTuple_GET_ITEM(held.ptr(), i))
      return false;
  return true;
}

bool same_keys(const StateKeys& a, const StateKeys& b) {
  const auto same = [](const StateKey& x, const StateKey& y) {
    return std::strcmp(x.name, y.name) == 0 && x.initial == y.initial && x.sign == y.sign;
  };
  if (a.array_count != b.array_count || a.scalar_count != b.scalar_count) return false;
  for (int k = 0; k < a.array_count; ++k)
    if (!same(a.arrays[k], b.arrays[k])) return false;
  for (int k = 0; k < a.scalar_count; ++k)
    if (!same(a.scalars[k], b.scalars[k])) return false;
  return true;
}

// Whether `c`, collected at an earlier step, describes this one: the same
// kernels, the same group params, state dicts and state arrays (the objects
// c holds), grads for the same params, and per group the same state keys and
// storage options. The hyperparameters are read again, as collect() reads
// them, and every step value is set; of the arrays only new grads are
// checked (take_new_grads). Reads and checks as collect() does, so it raises
// the same errors; writes only c.
template <class Rule>
bool refresh(Collection<Rule>& c, py::handle param_groups_in, py::handle grads, py::handle state,
             const GradScale& grad_scale) {
  if (c.table != &active_kernels() || c.grad_scale_active != grad_scale.active) return false;
  const py::tuple param_groups = snapshot(param_groups_in, "param_groups");
  if (param_groups.size() != c.group_params.size()) return false;
  for (std::size_t g = 0; g < param_groups.size(); ++g) {
    if (!PyDict_Check(param_groups[g].ptr())) return false;
    PyObject* params = dict_item(param_groups[g], "params");
    if (params == nullptr || !same_items(params, c.group_params[g])) return false;
  }
  for (std::size_t g = 0; g < param_groups.size(); ++g) {
    GroupSetting<Rule>& setting = c.settings[g];
    const GroupReader reader(param_groups[g], static_cast<std::int64_t>(g));
    const auto hyper = Rule::read(reader);
    if (!same_keys(state_keys_of<Rule>(hyper), setting.keys) || !(read_storage_options(reader) == setting.storage))
      return false;
    setting.hyper = hyper;
  }
  if (!same_items(state, c.state)) return false;
  const auto holds = [](const py::object& entry, const char* key, const py::object& array) {
    return dict_item(entry, key) == array.ptr();
  };
  for (const ParamStep<Rule>& p : c.steps) {
    for (int k = 0; k < p.keys.array_count; ++k) {
      const char* key = p.keys.arrays[k].name;
      if (!holds(p.entry, key, p.state_arrays[k]) || (p.absmax[k] && !holds(p.entry, absmax_key(key), p.absmax[k])))
        return false;
    }
    if ((p.master && !holds(p.entry, "master_param", p.master)) ||
        (p.compensation && !holds(p.entry, "kahan_comp", p.compensation)))
      return false;
  }
  if (!same_items(grads, c.grads) && !take_new_grads(c, grads)) return false;
  for (ParamStep<Rule>& p : c.steps) set_step_values(p, c.settings[p.group], grad_scale, false);
  return true;
}

// Releasing the GIL and taking it back (waking a waiting Python thread)
// costs more than a step that moves a few KB (under a microsecond): such
// steps keep it.
constexpr std::int64_t kKeepGilBytes = 32 << 10;

// Phase 2: the update, every tensor in one parallel region, without the GIL
// (unless under kKeepGilBytes).
// Returns the position in `steps` of the first param whose grad is not
// finite (nothing was written), or -1 when the update ran.
template <class Rule>
std::int64_t run(Collection<Rule>& c, bool check_finite) {
  const KernelTable& table = active_kernels();
  std::vector<ParamStep<Rule>>& steps = c.steps;  // no longer grows: pointing into it is safe
  std::vector<Task>& tasks = c.tasks;
  std::vector<FiniteCheck>& checks = c.checks;
  tasks.clear();
  checks.clear();
  tasks.reserve(steps.size());
  checks.reserve(steps.size());
  std::int64_t bytes = 0;
  for (ParamStep<Rule>& p : steps) {
    bytes += p.task.size * p.task.bytes_per_element;
    if (p.is_staged) {
      p.staged.scalars = &p.scalars;
      p.task.scalars = &p.staged;
    } else {
      p.task.scalars = &p.scalars;
    }
    tasks.push_back(p.task);
    checks.push_back(table.all_finite[p.dtype]);
  }
  std::optional<py::gil_scoped_release> release;
  if (bytes >= kKeepGilBytes) release.emplace();
  return run_tasks(tasks, check_finite ? checks.data() : nullptr);
}

// Phase 3: record into each state dict what the step created and counted.
template <class Rule>
void record(const std::vector<ParamStep<Rule>>& steps) {
  const auto set = [](const py::object& entry, const char* key, py::handle value) {
    if (PyDict_SetItem(entry.ptr(), interned(key), value.ptr()) != 0) throw py::error_already_set();
  };
  for (const ParamStep<Rule>& p : steps) {
    for (int k = 0; k < p.keys.array_count; ++k) {
      if (!p.created[k]) continue;
      set(p.entry, p.keys.arrays[k].name, p.state_arrays[k]);
      if (p.absmax[k]) set(p.entry, absmax_key(p.keys.arrays[k].name), p.absmax[k]);
    }
    if (p.master_created) set(p.entry, "master_param", p.master);
    if (p.compensation_created) set(p.entry, "kahan_comp", p.compensation);
    set(p.entry, "step", py::int_(p.t));
    for (int k = 0; k < p.keys.scalar_count; ++k) set(p.entry, p.keys.scalars[k].name, py::float_(p.scalar_state[k]));
  }
}

}  // namespace

GradScale read_grad_scale(py::handle value) {
  if (value.is_none()) return {};
  const double scale = finite_number(value, [] { return std::string("grad_scale"); });
  if (!(scale > 0.0)) throw py::value_error("grad_scale must be > 0, got " + float_repr(scale));
  return {scale != 1.0, scale};
}

namespace {

// Phases 2 and 3 of a collected step: the step's result.
template <class Rule>
py::object run_and_record(Collection<Rule>& c, bool check_finite) {
  const std::int64_t first_bad = run(c, check_finite);
  if (first_bad >= 0) return py::int_(c.steps[static_cast<std::size_t>(first_bad)].index);
  record(c.steps);
  return py::none();
}

}  // namespace

template <class Rule>
py::object step(py::handle param_groups, py::handle grads, py::handle state, bool check_finite,
                py::handle grad_scale) {
  PooledCollection<Rule> c;
  collect(*c, param_groups, grads, state, read_grad_scale(grad_scale));
  return run_and_record(*c, check_finite);
}

template <class Rule>
py::object step_cached(StepCache& cache, py::handle param_groups, py::handle grads, py::handle state,
                       bool check_finite, py::handle grad_scale) {
  const GradScale scale = read_grad_scale(grad_scale);
  // A step inside this one (a hyperparameter's own code calling step) or
  // beside it (another thread, while this one runs without the GIL) neither
  // uses nor replaces the cache.
  if (cache.in_use) return step<Rule>(param_groups, grads, state, check_finite, grad_scale);
  cache.in_use = true;
  struct Release {
    StepCache& cache;
    ~Release() { cache.in_use = false; }
  } release{cache};
  auto* cached = cache.rule == Rule::id ? static_cast<Collection<Rule>*>(cache.entry.get()) : nullptr;
  bool fits = false;
  if (cached != nullptr) {
    try {
      fits = refresh(*cached, param_groups, grads, state, scale);
    } catch (...) {
      cache.entry.reset();  // it may hold a new grad that failed a later check
      throw;
    }
  }
  if (fits) {
    ++cache.hits;
    return run_and_record(*cached, check_finite);
  }
  cache.entry.reset();
  auto fresh = std::make_unique<Collection<Rule>>();
  fresh->keep_ranges = true;
  collect(*fresh, param_groups, grads, state, scale);
  py::object result = run_and_record(*fresh, check_finite);
  if (!fresh->created_any) {  // the next step, given the same objects, makes no state either
    cache.entry = std::move(fresh);
    cache.rule = Rule::id;
  }
  return result;
}

#define FUSEDOPT_INSTANTIATE_STEP(Type, name, summary)                                         \
  template py::object step<Type##Rule>(py::handle, py::handle, py::handle, bool, py::handle); \
  template py::object step_cached<Type##Rule>(StepCache&, py::handle, py::handle, py::handle, bool, py::handle);
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_INSTANTIATE_STEP)
#undef FUSEDOPT_INSTANTIATE_STEP

void check_params(py::handle params, std::int64_t first_index) {
  const py::tuple all = snapshot(params, "params");
  OverlapCheck overlaps;
  for (std::size_t k = 0; k < all.size(); ++k) {
    const ArrayLabel label{"params", first_index + static_cast<std::int64_t>(k)};
    const py::array param = as_array(all[k], label);
    overlaps.add(check_param(param, label), label, /*written=*/true);
  }
  overlaps.check();
}

void roof(py::handle tensors_in) {
  const KernelTable& table = active_kernels();
  const py::tuple tensors = snapshot(tensors_in, "tensors");
  std::vector<RoofScalars> scalars(tensors.size());  // sized once: the tasks point into it
  std::vector<Task> tasks;
  std::vector<py::object> arrays;
  OverlapCheck overlaps;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const py::tuple streams = snapshot(tensors[i], "a roof tensor");
    const auto stream_count = static_cast<int>(streams.size());
    if (stream_count < 2 || stream_count > 5)
      throw py::value_error("a roof tensor has 2 to 5 arrays, got " + std::to_string(stream_count));
    const auto index = static_cast<std::int64_t>(i);
    const ArrayLabel first_label{"tensors", index, "0"};
    const py::array first = as_array(streams[0], first_label);
    const Stream head = check_float_array(first, first_label, true);
    scalars[i] = {stream_count, stream_count - 1};
    Task task{table.kernels[kRoof][compute_of(head.dtype)], &scalars[i], {}, head.size,
              itemsize(head.dtype) * (2 * stream_count - 1)};
    for (int k = 0; k < stream_count; ++k) {
      static const char* const names[] = {"0", "1", "2", "3", "4"};
      const ArrayLabel label{"tensors", index, names[k]};
      const bool written = k + 1 < stream_count;
      py::array a = as_array(streams[static_cast<std::size_t>(k)], label);
      const Stream s = check_like_param(a, first, head.dtype, label, first_label, written, DtypeRule::kSameAsParam);
      overlaps.add(s, label, written);
      task.streams[k] = s.data;
      arrays.push_back(std::move(a));
    }
    tasks.push_back(task);
  }
  overlaps.check();
  py::gil_scoped_release release;
  run_tasks(tasks);
}

void bytes_roof(py::handle tensors_in) {
  const KernelTable& table = active_kernels();
  const py::tuple tensors = snapshot(tensors_in, "tensors");
  std::vector<BytesRoofScalars> scalars(tensors.size());  // sized once: the tasks point into it
  std::vector<Task> tasks;
  std::vector<py::array> arrays;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const py::tuple parts = snapshot(tensors[i], "a roof tensor");
    if (parts.size() != 3) throw py::value_error("a roof tensor is (updated, read, stored), three lists of arrays");
    BytesRoofScalars& s = scalars[i];
    int* const counts[3] = {&s.updated, &s.read, &s.stored};
    Task task{table.bytes_roof, &s, {}, 0, 0};
    int stream = 0;
    for (int part = 0; part < 3; ++part) {
      const py::tuple list = snapshot(parts[static_cast<std::size_t>(part)], "a roof tensor's arrays");
      *counts[part] = static_cast<int>(list.size());
      for (py::handle item : list) {
        if (stream == kMaxStreams)
          throw py::value_error("a roof tensor has at most " + std::to_string(kMaxStreams) + " arrays");
        if (!py::isinstance<py::array>(item)) throw py::type_error("a roof tensor's arrays must be NumPy arrays");
        py::array a = py::reinterpret_borrow<py::array>(item);
        const auto width = static_cast<int>(a.itemsize());
        const bool written = part != 1;
        if (!(a.flags() & py::array::c_style) || !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
          throw py::value_error("a roof tensor's arrays must be C-contiguous and aligned");
        if (written && !a.writeable()) throw py::value_error("a roof tensor's written arrays must be writeable");
        if (width != 1 && width != 2 && width != 4 && width != 8)
          throw py::value_error("a roof array's elements must be 1, 2, 4 or 8 bytes");
        if (stream == 0) task.size = a.size();
        if (a.size() != task.size) throw py::value_error("a roof tensor's arrays must have one size");
        s.widths[stream] = width;
        task.streams[stream] = const_cast<void*>(a.data());  // read-only arrays are never written
        task.bytes_per_element += width * (part == 0 ? 2 : 1);
        arrays.push_back(std::move(a));
        ++stream;
      }
    }
    if (s.read == 0) throw py::value_error("a roof tensor reads at least one array");
    tasks.push_back(task);
  }
  py::gil_scoped_release release;
  run_tasks(tasks);
}

// ------------------------------------------------------- gradient passes

namespace {

struct Grad {
  py::object array;
  Stream stream;
  std::int64_t index;  // in the caller's list
};

// The arrays of a grads list, None entries skipped, every one checked before
// any is touched; `written` ones must be writeable and must not overlap.
std::vector<Grad> read_grads(py::handle grads_in, bool written) {
  const py::tuple grads = snapshot(grads_in, "grads");
  std::vector<Grad> out;
  OverlapCheck overlaps;
  for (std::size_t i = 0; i < grads.size(); ++i) {
    if (grads[i].is_none()) continue;
    const ArrayLabel label{"grads", static_cast<std::int64_t>(i)};
    py::array a = as_array(grads[i], label);
    const Stream s = check_float_array(a, label, written);
    overlaps.add(s, label, written);
    out.push_back({std::move(a), s, static_cast<std::int64_t>(i)});
  }
  if (written) overlaps.check();
  return out;
}

// Runs one in-place elementwise kernel over every grad in one parallel region.
void run_over_grads(const std::vector<Grad>& grads, const Kernel (&kernels)[kFloatDtypeCount], const void* scalars) {
  std::vector<Task> tasks;
  for (const Grad& g : grads)
    tasks.push_back(Task{kernels[g.stream.dtype], scalars, {g.stream.data}, g.stream.size, 2 * itemsize(g.stream.dtype)});
  py::gil_scoped_release release;
  run_tasks(tasks);
}

}  // namespace

double grad_norm(py::handle grads, double norm_type) {
  if (!(norm_type > 0.0))
    throw py::value_error("norm_type must be a number > 0 or inf, got " +
                          py::repr(py::float_(norm_type)).cast<std::string>());
  const NormKind kind = norm_type == 1.0 ? kNormL1
                        : norm_type == 2.0 ? kNormL2
                        : std::isinf(norm_type) ? kNormLinf
                        : kNormLp;
  const NormScalars scalars{norm_type};
  const std::vector<Grad> checked = read_grads(grads, /*written=*/false);
  const KernelTable& table = active_kernels();
  std::vector<ReduceTask> tasks;
  for (const Grad& g : checked)
    tasks.push_back({table.norm_partial[kind][g.stream.dtype], &scalars, g.stream.data, g.stream.size,
                     itemsize(g.stream.dtype)});
  double total;
  {
    py::gil_scoped_release release;
    total = reduce_blocks(tasks, kind == kNormLinf ? Combine::kMax : Combine::kSum);
  }
  switch (kind) {
    case kNormL2: return std::sqrt(total);
    case kNormLp: return std::pow(total, 1.0 / norm_type);
    default: return total;  // L1 and Linf need no root
  }
}

void scale_grads(py::handle grads, double factor) {
  const std::vector<Grad> checked = read_grads(grads, /*written=*/true);
  const ScaleScalars scalars{factor};
  run_over_grads(checked, active_kernels().scale, &scalars);
}

void clamp_grads(py::handle grads, double limit) {
  if (!(limit >= 0.0))
    throw py::value_error("clip_value must be >= 0, got " + py::repr(py::float_(limit)).cast<std::string>());
  const std::vector<Grad> checked = read_grads(grads, /*written=*/true);
  const ClampScalars scalars{limit};
  run_over_grads(checked, active_kernels().clamp, &scalars);
}

py::object first_nonfinite(py::handle grads) {
  const std::vector<Grad> checked = read_grads(grads, /*written=*/false);
  const KernelTable& table = active_kernels();
  for (const Grad& g : checked) {
    bool finite;
    {
      py::gil_scoped_release release;
      finite = table.all_finite[g.stream.dtype](g.stream.data, 0, g.stream.size);
    }
    if (!finite) return py::int_(g.index);
  }
  return py::none();
}

}  // namespace fusedopt
